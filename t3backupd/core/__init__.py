"""The pure core: names, retention, usermap, cron, config, the worker protocol.

No privileges and no side effects beyond reading the root-owned files it is given; both
the root side and the worker import it, and it imports neither.
"""

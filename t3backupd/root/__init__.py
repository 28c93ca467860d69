"""The root side: CLI, daemon, spawning workers, passes, metrics, sd_notify.

This is the code that runs as root (or as the invoking user in non-root mode). It never
opens a path a user controls: every user file is touched by a worker running as that
user (`t3backupd.worker`), whose reports it treats as hostile input.
"""

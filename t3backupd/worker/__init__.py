"""The worker: the process the root side starts *as the owning user* for one job.

Everything under this package runs with the user's uid, so it imports only
`t3backupd.core` (never `t3backupd.root`): `tests/unit/test_layout.py` enforces it.
"""

"""`python -I -m t3backupd.worker`: one job as the user (see `t3backupd.worker.main`)."""

# First, before any other import: `systemctl kill -s HUP|USR1 t3backupd` signals every
# process of the unit, and these are the daemon's signals (reload, pass), never a worker's.
# The parent spawns with both blocked, so one sent before this line stays pending; ignoring
# them discards it, and only then are they unblocked.
from __future__ import annotations

import signal

signal.signal(signal.SIGHUP, signal.SIG_IGN)
signal.signal(signal.SIGUSR1, signal.SIG_IGN)
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP, signal.SIGUSR1})

from t3backupd.worker.main import main  # noqa: E402

raise SystemExit(main())

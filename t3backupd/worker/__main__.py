"""`python -I -m t3backupd.worker`: one job as the user (see `t3backupd.worker.main`)."""

from __future__ import annotations

from t3backupd.worker.main import main

raise SystemExit(main())

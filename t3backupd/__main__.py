"""`python -m t3backupd` is the same as the `t3backupd` console script."""

from __future__ import annotations

from t3backupd.root.cli import main

raise SystemExit(main())

"""`python -I -m t3backupd_dev.sampledb ...`: the command line (see the package docstring)."""

from __future__ import annotations

import sys

from t3backupd_dev.sampledb.cli import main

sys.exit(main())

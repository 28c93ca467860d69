"""`make demo`'s program, run for real (as root: the demo user and the privilege drop),
stopped after the first pass; then `--clean` removes what it made."""

from __future__ import annotations

import pwd
import re
import subprocess
import sys
from pathlib import Path

from support import need
from support.system import IS_ROOT


def demo(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-I", "-m", "t3backupd.demo", "--dir", str(directory), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd="/",
    )


def test_demo_takes_lists_and_verifies_a_snapshot_then_cleans_up(sandbox: Path) -> None:
    need(IS_ROOT, "needs root: the demo creates its own user")
    directory = sandbox / "demo"
    try:
        result = demo(directory, "--no-serve", "--size-mb", "8")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "t3demo: ok state-" in result.stdout
        assert "1 snapshot(s)" in result.stdout
        assert re.search(r"(?m)^t3demo: state-\S+\.sqlite\s+ok$", result.stdout), result.stdout
        snapshots = list((directory / "backups" / "t3demo").glob("state-*.sqlite"))
        assert len(snapshots) == 1
        assert snapshots[0].stat().st_uid == pwd.getpwnam("t3demo").pw_uid
    finally:
        cleaned = demo(directory, "--clean")

    assert cleaned.returncode == 0, cleaned.stderr
    assert not directory.exists()
    try:
        pwd.getpwnam("t3demo")
    except KeyError:
        pass
    else:
        raise AssertionError("demo user still exists after --clean")

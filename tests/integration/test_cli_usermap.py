"""A missing usermap: `check-config` (validation) refuses it with one line and exit 2;
`snapshot` behaves like the legacy script (zero users, one error line, exit 0)."""

from __future__ import annotations

import json
from pathlib import Path

from support.system import t3backupd


def write_config(sandbox: Path) -> Path:
    config = sandbox / "config.toml"
    config.write_text(
        f'usermap = "{sandbox / "no-such-usermap"}"\ndest = "{sandbox / "dest"}"\n'
        '[log]\nformat = "json"\n'
    )
    return config


def test_check_config_refuses_a_missing_usermap_with_one_line(sandbox: Path) -> None:
    result = t3backupd(write_config(sandbox), "check-config")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "no-such-usermap" in lines[0] and "usermap unreadable" in lines[0]


def test_snapshot_with_a_missing_usermap_backs_up_nobody_and_says_so(sandbox: Path) -> None:
    result = t3backupd(write_config(sandbox), "snapshot")
    assert result.returncode == 0, result.stderr
    assert "no users to back up" in result.stdout
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert [event["event"] for event in events] == ["usermap unreadable"]
    assert "Traceback" not in result.stderr

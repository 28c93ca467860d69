"""docs/operations.md and config.example.toml against the code (issue 21, item 8): every
reason label the failure counters can carry has a row, the rebuild-from-nothing steps
put the usermap back, and the engines' PATH is the one the code uses."""

from __future__ import annotations

from pathlib import Path

from t3backupd.core.protocol import FAILURE_REASONS
from t3backupd.root.offsite.engine import REASONS
from t3backupd.root.offsite.process import BASE_ENVIRONMENT

ROOT = Path(__file__).resolve().parents[2]
OPERATIONS = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")


def section(title: str) -> str:
    """The text of the `### title` section (up to the next heading)."""
    body = OPERATIONS.split(f"\n### {title}\n", 1)[1]
    return body.split("\n### ", 1)[0].split("\n## ", 1)[0]


def test_every_failure_reason_label_has_a_row() -> None:
    reasons = section("Failure reasons (the `reason` label)")
    snapshot, offsite = reasons.split("t3backup_offsite_failures_total", 1)
    assert "t3backup_failures_total" in snapshot
    for reason in FAILURE_REASONS:
        assert f"\n| `{reason}` | " in snapshot, reason
    for reason in REASONS:
        assert f"\n| `{reason}` | " in offsite, reason
    assert "`failed` for anything else" in OPERATIONS


def test_rebuilding_from_nothing_puts_the_usermap_back_before_restoring() -> None:
    steps = section("Rebuilding a machine from nothing")
    assert "usermap" in steps and "/etc/ttyd-user-map" in steps
    assert steps.index("t3backupd check-config") < steps.index("t3backupd restore")


def test_config_example_names_the_fixed_path_the_engines_are_found_on() -> None:
    example = (ROOT / "config.example.toml").read_text(encoding="utf-8")
    assert BASE_ENVIRONMENT["PATH"] in example
    assert "PATH lookup unless absolute" not in example

"""Pure parts of restore and verify: request parsing, snapshot choice, outcome
classification, checksum lines, and the report fields restore adds to the protocol."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from t3backupd.core.checks import (
    classify,
    parse_checksum_line,
    select_for_verify,
    verify_failures,
)
from t3backupd.core.errors import SnapshotNotFound, UsageError
from t3backupd.core.naming import SnapshotName, parse_name
from t3backupd.core.protocol import Report, ReportError, VerifyResult, parse_report
from t3backupd.core.selection import (
    Choice,
    SnapshotRequest,
    choose_snapshot,
    describe_holders,
    parse_snapshot_request,
    pick_snapshot,
    undo_command,
)
from t3backupd.worker.restore import find_holders

DIGEST = "ab" * 32
OTHER = "cd" * 32


def name(filename: str) -> SnapshotName:
    parsed = parse_name(filename, local_tz=UTC)
    assert parsed is not None, filename
    return parsed


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("latest", "latest"),
        ("pre-restore", "label"),
        ("v1.2_bump", "label"),
        ("state-20250101T000000Z.sqlite", "name"),
        ("state-20250101T000000Z--pre-restore.sqlite", "name"),
        ("state-20250101-030000.sqlite", "name"),
    ],
)
def test_snapshot_request_accepts_names_latest_and_labels(text: str, kind: str) -> None:
    assert parse_snapshot_request(text) == SnapshotRequest(kind, text)


@pytest.mark.parametrize(
    "text",
    [
        "../state-20250101T000000Z.sqlite",
        "..",
        "a/b",
        "/etc/shadow",
        "state-20250101T000000Z.sqlite/..",
        "x..y",
    ],
)
def test_snapshot_request_with_slash_or_dotdot_is_refused_naming_why(text: str) -> None:
    with pytest.raises(UsageError, match=r"never contains '/' or '\.\.'"):
        parse_snapshot_request(text)


@pytest.mark.parametrize("text", ["", "bad label", "x" * 65, "tab\there", "nul\0"])
def test_snapshot_request_that_is_neither_name_nor_label_is_refused(text: str) -> None:
    with pytest.raises(UsageError, match="invalid --snapshot"):
        parse_snapshot_request(text)


ENTRIES = [
    (name("state-20250101-030000.sqlite"), True),  # legacy, local time = UTC here
    (name("state-20250102T030000Z--before-bump.sqlite"), True),
    (name("state-20250103T030000Z.sqlite"), True),
    (name("state-20250104T030000Z--before-bump.sqlite"), True),
    (name("state-20250105T030000Z.sqlite"), True),
    (name("state-20991231T000000Z.sqlite"), False),  # a planted link, newest by name
]


def test_latest_is_the_newest_regular_snapshot_by_time_in_the_name() -> None:
    chosen = choose_snapshot(ENTRIES, SnapshotRequest("latest", "latest"))
    assert chosen.filename == "state-20250105T030000Z.sqlite"


def test_latest_orders_by_parsed_time_not_by_string() -> None:
    # As strings, "state-20250101-..." > "state-20250101T..."; by time the legacy one
    # (03:00) is older than the current-format one taken at 04:00.
    entries = [
        (name("state-20250101T040000Z.sqlite"), True),
        (name("state-20250101-030000.sqlite"), True),
    ]
    chosen = choose_snapshot(entries, SnapshotRequest("latest", "latest"))
    assert chosen.filename == "state-20250101T040000Z.sqlite"


def test_label_picks_the_newest_snapshot_with_that_label() -> None:
    chosen = choose_snapshot(ENTRIES, SnapshotRequest("label", "before-bump"))
    assert chosen.filename == "state-20250104T030000Z--before-bump.sqlite"


def test_exact_name_picks_that_entry_even_if_not_regular() -> None:
    wanted = "state-20991231T000000Z.sqlite"
    assert choose_snapshot(ENTRIES, SnapshotRequest("name", wanted)).filename == wanted
    older = "state-20250102T030000Z--before-bump.sqlite"
    assert choose_snapshot(ENTRIES, SnapshotRequest("name", older)).filename == older


@pytest.mark.parametrize(
    "request_",
    [
        SnapshotRequest("label", "nope"),
        SnapshotRequest("name", "state-20300101T000000Z.sqlite"),
    ],
)
def test_missing_snapshot_raises_snapshot_not_found(request_: SnapshotRequest) -> None:
    with pytest.raises(SnapshotNotFound):
        choose_snapshot(ENTRIES, request_)


def test_latest_and_labels_skip_future_dated_names_and_name_the_one_skipped() -> None:
    # The clock ran a year ahead for two weeks, then was fixed: snapshots written then
    # are named for next year and older in content than today's.
    now = datetime(2025, 1, 5, 4, 0, tzinfo=UTC)
    ahead = name("state-20260103T030000Z.sqlite")
    ahead_label = name("state-20260104T030000Z--before-bump.sqlite")
    entries = [*ENTRIES[:-1], (ahead, True), (ahead_label, True)]
    latest = pick_snapshot(entries, SnapshotRequest("latest", "latest"), now)
    assert latest == Choice(name("state-20250105T030000Z.sqlite"), ahead_label)
    label = pick_snapshot(entries, SnapshotRequest("label", "before-bump"), now)
    assert label == Choice(name("state-20250104T030000Z--before-bump.sqlite"), ahead_label)
    # An exact name is still restorable, future-dated or not.
    exact = pick_snapshot(entries, SnapshotRequest("name", ahead.filename), now)
    assert exact == Choice(ahead)
    # Within retention's slack (5 minutes) a name is current.
    slight = name("state-20250105T040400Z.sqlite")
    assert pick_snapshot([*entries, (slight, True)], SnapshotRequest("latest", "latest"),
                         now).snapshot == slight  # fmt: skip
    # Only future-dated ones: not found, in one line naming the newest and its date.
    with pytest.raises(SnapshotNotFound) as error:
        pick_snapshot([(ahead, True)], SnapshotRequest("latest", "latest"), now)
    message = str(error.value)
    assert "\n" not in message and "not dated in the future" in message
    assert ahead.filename in message and "2026-01-03 03:00:00Z" in message


def test_latest_of_no_regular_snapshot_raises() -> None:
    with pytest.raises(SnapshotNotFound):
        choose_snapshot(ENTRIES[-1:], SnapshotRequest("latest", "latest"))


def test_classify_ok_only_when_checksum_matches_and_no_problems() -> None:
    assert classify(DIGEST, DIGEST, []) == ("ok", "")


def test_classify_checksum_mismatch_wins_over_integrity_errors() -> None:
    outcome, detail = classify(DIGEST, OTHER, ["page 3: btreeInitPage() returns error code 11"])
    assert outcome == "checksum_mismatch"
    assert "btreeInitPage" in detail


def test_classify_integrity_error_with_matching_checksum() -> None:
    outcome, detail = classify(DIGEST, DIGEST, ["database disk image is malformed"])
    assert (outcome, detail) == ("integrity_error", "database disk image is malformed")


def test_classify_missing_checksum_is_its_own_outcome() -> None:
    assert classify(None, DIGEST, [])[0] == "missing_checksum"
    assert classify(None, DIGEST, ["bad"])[0] == "integrity_error"


NAME = "state-20250101T000000Z.sqlite"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"{DIGEST}  {NAME}\n", DIGEST),
        (f"{DIGEST.upper()} *{NAME}\n", DIGEST),
        (f"{DIGEST}  other.sqlite\n", None),
        (f"{DIGEST[:-1]}  {NAME}\n", None),
        (f"{'zz' * 32}  {NAME}\n", None),
        (f"{DIGEST}  {NAME}\n{DIGEST}  {NAME}\n", None),
        ("", None),
    ],
)
def test_checksum_line_is_sha256sum_format_for_this_name_only(
    text: str, expected: str | None
) -> None:
    assert parse_checksum_line(text, NAME) == expected


def test_verify_failures_counts_bad_snapshots_and_a_failed_run_as_one() -> None:
    report = Report(
        action="verify",
        status="ok",
        verified=(
            VerifyResult(NAME, "ok"),
            VerifyResult("state-20250102T000000Z.sqlite", "checksum_mismatch"),
            VerifyResult("state-20250103T000000Z.sqlite", "missing_checksum"),
        ),
    )
    assert verify_failures(report) == 2
    assert verify_failures(Report(action="verify", status="ok")) == 0
    crashed = Report(action="verify", status="failed", reason="worker_crashed")
    assert verify_failures(crashed) == 1


def _stat(mode: int) -> os.stat_result:
    return os.stat_result((mode, 0, 0, 0, 0, 0, 0, 0, 0, 0))


def test_verify_selects_every_entry_or_the_newest_regular_one() -> None:
    entries = [
        (name("state-20250101T000000Z.sqlite"), _stat(stat.S_IFREG | 0o600)),
        (name("state-20250102T000000Z.sqlite"), _stat(stat.S_IFREG | 0o600)),
        (name("state-20250103T000000Z.sqlite"), _stat(stat.S_IFLNK | 0o777)),
    ]
    assert [p.filename for p in select_for_verify(entries, False)] == [
        "state-20250101T000000Z.sqlite",
        "state-20250102T000000Z.sqlite",
        "state-20250103T000000Z.sqlite",
    ]
    assert [p.filename for p in select_for_verify(entries, True)] == [
        "state-20250102T000000Z.sqlite"
    ]


def test_describe_holders_names_pids_and_commands_and_caps_the_list() -> None:
    holders = [(100 + index, f"t3-serve --port {index}") for index in range(7)]
    line = describe_holders(holders)
    assert line.startswith("the database is open by pid 100 (t3-serve --port 0)")
    assert "pid 104" in line and "pid 105" not in line
    assert line.endswith("and 2 more")


def test_undo_command_uses_the_pre_restore_label_and_the_config_given() -> None:
    assert undo_command("alice") == (
        "t3backupd restore --user alice --snapshot pre-restore --in-place"
    )
    assert undo_command("alice", "/etc/x.toml").startswith("t3backupd -c /etc/x.toml restore")


def test_find_holders_names_the_process_holding_the_file(tmp_path: Path) -> None:
    database = tmp_path / "state.sqlite"
    database.write_bytes(b"x")
    other = tmp_path / "other"
    other.write_bytes(b"y")
    holder = subprocess.Popen(["sh", "-c", 'exec 3<"$1"; exec sleep 30', "sh", str(database)])
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            found = find_holders([str(database), str(database) + "-wal"])
            # The fd is open before `exec sleep` completes; wait for the final command line.
            if found == [(holder.pid, "sleep 30")]:
                break
            time.sleep(0.02)
        assert found == [(holder.pid, "sleep 30")]
        assert find_holders([str(other)]) == []
        assert find_holders([str(tmp_path / "missing")]) == []
    finally:
        holder.kill()
        holder.wait()


def _report(action: str, **fields: object) -> bytes:
    data = {"action": action, "status": "failed", "protocol": 1, **fields}
    return json.dumps(data).encode()


def test_restore_reports_may_carry_restore_reasons_snapshot_reports_may_not() -> None:
    for reason in ("not_found", "exists", "in_use"):
        assert parse_report(_report("restore", reason=reason), "restore").reason == reason
        with pytest.raises(ReportError, match="reason"):
            parse_report(_report("snapshot", reason=reason), "snapshot")


def test_restored_from_must_be_a_snapshot_name() -> None:
    good = _report("restore", reason="busy", extra={"restored_from": NAME})
    assert parse_report(good, "restore").extra["restored_from"] == NAME
    bad = _report("restore", reason="busy", extra={"restored_from": "../../etc/shadow"})
    with pytest.raises(ReportError, match="restored_from"):
        parse_report(bad, "restore")


def test_a_restore_of_a_future_dated_snapshot_says_so() -> None:
    from datetime import UTC, datetime, timedelta

    from t3backupd.core.naming import format_name
    from t3backupd.root.restore import future_note

    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    future = format_name(now + timedelta(days=400))
    current = format_name(now - timedelta(hours=1))
    note = future_note(
        Report(action="restore", status="ok", extra={"restored_from": future}), now.timestamp()
    )
    assert note is not None and future in note and "dated in the future" in note
    ok = Report(action="restore", status="ok", extra={"restored_from": current})
    assert future_note(ok, now.timestamp()) is None
    assert future_note(Report(action="restore", status="ok"), now.timestamp()) is None

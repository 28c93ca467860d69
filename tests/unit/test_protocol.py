"""Worker reports (t3backupd.core.protocol) are hostile input: the worker runs as the user, who
can make it print anything. parse_report must accept only what the protocol allows and
raise ReportError (never anything else) for the rest."""

from __future__ import annotations

import json
from typing import Any

import pytest

from t3backupd.core.protocol import (
    MAX_MESSAGE_CHARS,
    MAX_REPORT_BYTES,
    MAX_SNAPSHOTS_IN_REPORT,
    SCHEMA_HOLD,
    InventorySpec,
    JobSpec,
    Report,
    ReportError,
    RestoreSpec,
    SnapshotInfo,
    SnapshotSpec,
    VerifyResult,
    VerifySpec,
    failed,
    parse_report,
)

NAME = "state-20261125T101010Z.sqlite"
SNAPSHOT = {"name": NAME, "time": 1795601410.0, "bytes": 4096, "label": None, "has_checksum": True}


def report(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "protocol": 1,
        "action": "snapshot",
        "status": "ok",
        "reason": None,
        "message": "",
        "snapshot": dict(SNAPSHOT),
        "source_bytes": 8192,
        "duration_s": 0.25,
        "snapshots": [dict(SNAPSHOT)],
        "pruned": [],
    }
    data.update(overrides)
    return data


def encode(data: object) -> bytes:
    return json.dumps(data).encode()


def rejected(raw: bytes, action: str = "snapshot") -> str:
    with pytest.raises(ReportError) as caught:
        parse_report(raw, action)
    return str(caught.value)


# --- accepted -------------------------------------------------------------------------


def test_valid_report_is_accepted() -> None:
    parsed = parse_report(encode(report()) + b"\n", "snapshot")
    assert parsed.ok
    assert parsed.snapshot == SnapshotInfo(NAME, 1795601410.0, 4096, None, True)
    assert parsed.source_bytes == 8192
    assert parsed.snapshots == (parsed.snapshot,)


def test_minimal_report_gets_defaults() -> None:
    parsed = parse_report(
        encode({"protocol": 1, "action": "inventory", "status": "ok"}), "inventory"
    )
    assert parsed == Report(action="inventory", status="ok")


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        ("failed", "timeout"),
        ("failed", "sqlite_error"),
        ("failed", "busy"),
        ("skipped", "no_source"),
    ],
)
def test_known_status_and_reason_pairs_are_accepted(status: str, reason: str) -> None:
    parsed = parse_report(encode(report(status=status, reason=reason, snapshot=None)), "snapshot")
    assert (parsed.status, parsed.reason) == (status, reason)


def test_control_characters_in_message_are_neutralised() -> None:
    message = "\x1b[31mred\x1b[0m\nsecond line\r\x00\x07\u202e"
    parsed = parse_report(encode(report(message=message)), "snapshot")
    assert parsed.message.endswith("second line????")
    assert all(character.isprintable() for character in parsed.message)
    assert "red" in parsed.message


def test_message_is_truncated_to_500_characters() -> None:
    parsed = parse_report(encode(report(message="x" * 5000)), "snapshot")
    assert MAX_MESSAGE_CHARS == 500
    assert parsed.message == "x" * 500


def test_a_worker_can_name_a_guard_but_never_claim_root_s_schema_hold() -> None:
    guard = "state-20250101T000000Z--schema-26.sqlite"
    parsed = parse_report(encode(report(extra={"schema_guard": guard})), "snapshot")
    assert parsed.extra["schema_guard"] == guard
    with pytest.raises(ReportError, match="extra"):
        parse_report(encode(report(extra={"schema_guard": "../etc/passwd"})), "snapshot")
    with pytest.raises(ReportError, match="extra"):
        parse_report(encode(report(extra={SCHEMA_HOLD: "27"})), "snapshot")


def test_verify_detail_and_extra_values_are_cleaned_too() -> None:
    verified = [{"name": NAME, "outcome": "integrity_error", "detail": "bad\npage\x1b"}]
    extra = {"undo": "a\nb", "target": "t" * 5000}
    parsed = parse_report(encode(report(action="verify", verified=verified, extra=extra)), "verify")
    assert parsed.verified == (VerifyResult(NAME, "integrity_error", "bad?page?"),)
    assert parsed.extra["undo"] == "a?b"
    assert len(parsed.extra["target"]) == 4096


@pytest.mark.parametrize(
    "original",
    [
        Report(action="snapshot", status="ok"),
        Report(
            action="snapshot",
            status="ok",
            message="published",
            snapshot=SnapshotInfo(NAME, 1795601410.5, 123456, None),
            source_bytes=1 << 40,
            duration_s=12.5,
            snapshots=(
                SnapshotInfo("state-20261124-033000.sqlite", 1795527000.0, 10, None, False),
                SnapshotInfo("state-20261125T101010Z--pre-upgrade.sqlite", 1.0, 0, "pre-upgrade"),
            ),
            pruned=("state-20251125T101010Z.sqlite",),
        ),
        Report(
            action="verify",
            status="failed",
            reason="verify_failed",
            message="1 bad",
            verified=(VerifyResult(NAME, "checksum_mismatch", "sha256 differs"),),
        ),
        Report(action="restore", status="ok", extra={"restored_from": NAME, "undo": NAME}),
        failed("inventory", "permission", "cannot read"),
        Report(action="snapshot", status="skipped", reason="no_source"),
    ],
)
def test_to_json_then_parse_report_round_trips(original: Report) -> None:
    raw = original.to_json().encode()
    assert b"\n" not in raw
    assert parse_report(raw, original.action) == original


# --- rejected: framing ----------------------------------------------------------------


def test_report_over_one_mib_is_rejected_before_parsing() -> None:
    raw = encode(report(message="x" * MAX_REPORT_BYTES))
    assert "too large" in rejected(raw)


def test_report_of_exactly_the_cap_is_not_rejected_for_size() -> None:
    base = encode(report(message=""))
    raw = encode(report(message="x" * (MAX_REPORT_BYTES - len(base))))
    assert len(raw) == MAX_REPORT_BYTES
    assert parse_report(raw, "snapshot").message == "x" * 500


def test_two_report_lines_are_rejected() -> None:
    line = encode(report())
    assert "one report line" in rejected(line + b"\n" + line)


def test_empty_output_is_rejected() -> None:
    assert "got 0" in rejected(b"")
    rejected(b"  \n\n")


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"{",
        b"\xff\xfe\x00garbage",
        b"\x80\x81",
        b"[" * 100_000 + b"]" * 100_000,  # nesting deep enough to exhaust the recursion limit
        b"1" * 5000,  # more digits than Python converts
        b'{"protocol": 1, "source_bytes": ' + b"9" * 5000 + b"}",
    ],
)
def test_non_json_is_a_report_error_not_another_exception(raw: bytes) -> None:
    rejected(raw)


@pytest.mark.parametrize("data", [[], "ok", 1, None, [report()]])
def test_json_that_is_not_an_object_is_rejected(data: object) -> None:
    rejected(encode(data))


# --- rejected: schema -----------------------------------------------------------------


@pytest.mark.parametrize("protocol", [0, 2, "1", None, True, 1.5])
def test_wrong_protocol_version_is_rejected(protocol: object) -> None:
    rejected(encode(report(protocol=protocol)))


def test_missing_protocol_version_is_rejected() -> None:
    data = report()
    del data["protocol"]
    assert "protocol" in rejected(encode(data))


def test_report_for_another_action_is_rejected() -> None:
    assert "expected 'snapshot'" in rejected(encode(report(action="restore")))
    rejected(encode(report(action="snapshot")), action="verify")


@pytest.mark.parametrize("status", ["OK", "success", "", None, 1])
def test_unknown_status_is_rejected(status: object) -> None:
    assert "status" in rejected(encode(report(status=status)))


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        ("failed", "exploded"),
        ("failed", None),
        ("failed", "no_source"),
        ("skipped", "timeout"),
        ("skipped", None),
        ("ok", "timeout"),
        ("ok", ""),
    ],
)
def test_unknown_or_mismatched_reason_is_rejected(status: str, reason: object) -> None:
    assert "reason" in rejected(encode(report(status=status, reason=reason, snapshot=None)))


@pytest.mark.parametrize(
    "data",
    [
        report(admin=True),
        report(snapshot={**SNAPSHOT, "path": "/etc/shadow"}),
        report(snapshots=[{**SNAPSHOT, "uid": 0}]),
        report(extra={"command": "rm -rf /"}),
        report(verified=[{"name": NAME, "outcome": "ok", "extra": 1}]),
    ],
)
def test_unknown_keys_anywhere_are_rejected(data: dict[str, Any]) -> None:
    assert "unknown keys" in rejected(encode(data))


@pytest.mark.parametrize(
    "overrides",
    [
        {"source_bytes": -1},
        {"source_bytes": 1 << 63},
        {"source_bytes": 10**30},
        {"source_bytes": 1.5},
        {"source_bytes": True},
        {"source_bytes": "8192"},
        {"duration_s": -0.1},
        {"duration_s": 1e300},
        {"duration_s": False},
        {"duration_s": "1"},
        {"snapshot": {**SNAPSHOT, "bytes": -1}},
        {"snapshot": {**SNAPSHOT, "bytes": True}},
        {"snapshot": {**SNAPSHOT, "time": -1}},
        {"snapshot": {**SNAPSHOT, "time": True}},
        {"snapshot": {**SNAPSHOT, "time": None}},
        {"snapshot": {**SNAPSHOT, "has_checksum": 1}},
    ],
)
def test_negative_huge_or_mistyped_numbers_are_rejected(overrides: dict[str, Any]) -> None:
    rejected(encode(report(**overrides)))


@pytest.mark.parametrize("value", [b"NaN", b"Infinity", b"-Infinity"])
def test_non_finite_numbers_are_rejected(value: bytes) -> None:
    # json.loads accepts these non-standard literals, so they must be caught afterwards.
    template = encode(report(duration_s=0.5))
    rejected(template.replace(b'"duration_s": 0.5', b'"duration_s": ' + value))
    snapshot_time = template.replace(b'"time": 1795601410.0', b'"time": ' + value, 1)
    assert snapshot_time != template
    rejected(snapshot_time)


@pytest.mark.parametrize(
    "name",
    [
        "../state-20261125T101010Z.sqlite",
        "state-20261125T101010Z.sqlite/../../etc/shadow",
        "/etc/shadow",
        "..",
        "a/state-20261125T101010Z.sqlite",
        "state-20261125T101010Z--a/b.sqlite",
        "state.sqlite",
        "state-20261125T101010Z.sqlite.sha256",
        ".t3backupd-x.tmp",
        "",
        None,
        7,
    ],
)
def test_snapshot_names_outside_the_pattern_are_rejected_everywhere(name: object) -> None:
    rejected(encode(report(snapshot={**SNAPSHOT, "name": name})))
    rejected(encode(report(snapshots=[{**SNAPSHOT, "name": name}])))
    rejected(encode(report(pruned=[name])))
    verified = [{"name": name, "outcome": "ok", "detail": ""}]
    rejected(encode(report(action="verify", verified=verified)), action="verify")


@pytest.mark.parametrize("label", ["a/b", "..", "", "x" * 65, "a b", 5])
def test_invalid_labels_are_rejected(label: object) -> None:
    assert "label" in rejected(encode(report(snapshot={**SNAPSHOT, "label": label})))


def test_unknown_verify_outcome_is_rejected() -> None:
    verified = [{"name": NAME, "outcome": "fine", "detail": ""}]
    assert "outcome" in rejected(encode(report(action="verify", verified=verified)), "verify")


@pytest.mark.parametrize("key", ["snapshots", "pruned", "verified"])
def test_lists_must_be_lists(key: str) -> None:
    rejected(encode(report(**{key: {"0": NAME}})))


def test_too_many_snapshots_are_rejected() -> None:
    many = [{"name": NAME, "time": 1.0, "bytes": 1, "label": None}] * (MAX_SNAPSHOTS_IN_REPORT + 1)
    raw = json.dumps(report(snapshots=many), separators=(",", ":")).encode()
    assert len(raw) <= MAX_REPORT_BYTES  # rejected for the count, not the size
    assert "snapshots" in rejected(raw)


def test_too_many_pruned_names_are_rejected() -> None:
    raw = encode(report(pruned=[NAME] * (MAX_SNAPSHOTS_IN_REPORT + 1)))
    assert len(raw) <= MAX_REPORT_BYTES
    assert "pruned" in rejected(raw)


@pytest.mark.parametrize("message", [None, 5, ["a"], {"a": 1}])
def test_message_must_be_a_string(message: object) -> None:
    assert "message" in rejected(encode(report(message=message)))


def test_report_error_is_a_value_error() -> None:
    assert issubclass(ReportError, ValueError)


def test_restore_failure_reasons_are_only_accepted_for_restore() -> None:
    data = report(action="restore", status="failed", reason="not_found", snapshot=None)
    assert parse_report(encode(data), "restore").reason == "not_found"
    assert "reason" in rejected(encode({**data, "action": "snapshot"}))


@pytest.mark.parametrize("name", ["../state-20261125T101010Z.sqlite", "/etc/shadow", ""])
def test_restored_from_must_be_a_snapshot_name(name: str) -> None:
    data = report(action="restore", extra={"restored_from": name, "target": "/tmp/x"})
    assert "restored_from" in rejected(encode(data), "restore")


# --- job specs ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [
        SnapshotSpec(
            user="u",
            dest_dir="/d/u",
            source="/h/u/s.sqlite",
            method="vacuum",
            label="before",
            keep=3,
            fault="after_copy",
        ),
        InventorySpec(user="u", dest_dir="/d/u", timeout_seconds=60.0),
        VerifySpec(user="u", dest_dir="/d/u", verify="quick", latest_only=True),
        RestoreSpec(user="u", dest_dir="/d/u", snapshot="latest", target="/tmp/x", force=True),
    ],
    ids=lambda spec: spec.action,
)
def test_each_spec_round_trips_as_its_own_type(spec: JobSpec) -> None:
    parsed = JobSpec.from_json(spec.to_json())
    assert type(parsed) is type(spec) and parsed == spec
    assert json.loads(spec.to_json())["action"] == spec.action


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"not json", "not JSON"),
        (b"[1]", "JSON object"),
        (b'{"user": "u", "dest_dir": "/d"}', "unknown action None"),
        (b'{"action": "format-disk", "user": "u", "dest_dir": "/d"}', "unknown action"),
        (b'{"action": "inventory", "user": "u", "dest_dir": "/d", "source": "/x"}', "source"),
        (b'{"action": "snapshot", "user": "u", "dest_dir": "/d", "method": "cp"}', "method"),
        (b'{"action": "verify", "user": "u", "dest_dir": "/d", "verify": "fast"}', "verify"),
        (b'{"action": "snapshot", "user": "u", "dest_dir": "/d", "fault": "x"}', "fault"),
    ],
)
def test_from_json_raises_value_error_naming_the_problem(raw: bytes, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        JobSpec.from_json(raw)


# --- schema version (issue 22) ----------------------------------------------------------


@pytest.mark.parametrize("version", [0, 26, 2**31 - 1, None])
def test_a_schema_version_in_range_or_absent_is_accepted(version: int | None) -> None:
    parsed = parse_report(
        encode(report(snapshot={**SNAPSHOT, "schema_version": version})), "snapshot"
    )
    assert parsed.snapshot is not None and parsed.snapshot.schema_version == version


@pytest.mark.parametrize("version", [-1, 2**31, 10**30, 26.0, "26", True, [26]])
def test_a_forged_schema_version_is_refused(version: object) -> None:
    message = rejected(encode(report(snapshot={**SNAPSHOT, "schema_version": version})))
    assert "schema_version" in message
    rejected(encode(report(snapshots=[{**SNAPSHOT, "schema_version": version}])))


def test_a_snapshot_spec_names_a_known_schema_source() -> None:
    spec = SnapshotSpec(user="alice", dest_dir="/d/alice", schema_version="user_version")
    assert JobSpec.from_json(spec.to_json()) == spec
    bad = json.loads(spec.to_json())
    bad["schema_version"] = "max(rowid)"
    with pytest.raises(ValueError, match="schema_version"):
        JobSpec.from_json(json.dumps(bad).encode())


def test_the_published_digest_and_the_pre_restore_record_are_checked() -> None:
    digest = "ab" * 32
    published = parse_report(encode(report(snapshot={**SNAPSHOT, "sha256": digest})), "snapshot")
    assert published.snapshot is not None and published.snapshot.sha256 == digest
    assert "sha256" in rejected(encode(report(snapshot={**SNAPSHOT, "sha256": "AB" * 32})))
    pre = {"pre_restore": NAME, "pre_restore_bytes": "4096", "pre_restore_sha256": digest}
    restore = report(action="restore", snapshot=None, snapshots=[], extra=pre)
    assert parse_report(encode(restore), "restore").extra == pre
    for key, bad in (("pre_restore_bytes", "-1"), ("pre_restore_bytes", "1e9"),
                     ("pre_restore_sha256", "x" * 64)):  # fmt: skip
        forged = report(action="restore", snapshot=None, snapshots=[], extra={**pre, key: bad})
        assert key in rejected(encode(forged), "restore")

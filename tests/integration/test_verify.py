"""`verify` end to end, and restore refusing what verify rejects: real users, real
snapshots damaged on disk (a flipped byte; corrupt pages under a rewritten checksum; a
planted symlink), the real CLI and setuid workers. Needs root."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from pathlib import Path

import pytest
from structlog.testing import capture_logs
from support.snapshots import MakeUser, flip_byte, json_config, sha256_of, take_snapshot
from support.system import create_state_db, sha256sum_check, snapshot_files, t3backupd

from t3backupd.core.checks import verify_failures
from t3backupd.core.config import load_config
from t3backupd.core.protocol import UserResult
from t3backupd.core.usermap import User
from t3backupd.root.passes import run_verify_pass


def verify_json(config: Path, *args: str) -> tuple[int, dict[str, object]]:
    result = t3backupd(config, "verify", "--json", *args)
    return result.returncode, json.loads(result.stdout)


def outcomes(document: dict[str, object]) -> dict[str, str]:
    users = document["users"]
    assert isinstance(users, list)
    return {item["name"]: item["outcome"] for user in users for item in user["snapshots"]}


def corrupt_table_root(path: Path, table: str) -> None:
    """Overwrite the root b-tree page of `table` with garbage (page 1 stays intact)."""
    connection = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)
    try:
        page_size = connection.execute("PRAGMA page_size").fetchone()[0]
        root = connection.execute(
            "SELECT rootpage FROM sqlite_schema WHERE name = ?", (table,)
        ).fetchone()[0]
    finally:
        connection.close()
    assert root > 1
    with open(path, "r+b") as handle:
        handle.seek((root - 1) * page_size)
        handle.write(b"\xa5" * page_size)


def rewrite_checksum(path: Path) -> None:
    digest = sha256_of(path)
    Path(f"{path}.sha256").write_text(f"{digest}  {path.name}\n")


def assert_restore_refused(config: Path, user: User, name: str, database: Path) -> None:
    """Both restore forms refuse `name`, write nothing and take no pre-restore snapshot."""
    target = Path(user.home) / "restored.sqlite"
    snapshots_dir = Path(load_config(config).dest) / user.name
    before = snapshot_files(snapshots_dir)
    live = database.read_bytes()
    for where in (["--to", str(target)], ["--in-place"]):
        result = t3backupd(config, "restore", "--user", user.name, "--snapshot", name, *where)
        assert result.returncode == 1, result.stdout + result.stderr
        assert "verify_failed" in result.stderr and "refusing to restore" in result.stderr
    assert not target.exists()
    assert database.read_bytes() == live
    assert snapshot_files(snapshots_dir) == before, "a pre-restore snapshot was taken"


@pytest.mark.root
def test_verify_reports_each_snapshot_ok_and_exits_0_text_json_and_latest(
    sandbox: Path, make_user: MakeUser
) -> None:
    user = make_user()
    create_state_db(user, size_mb=1, seed=11)
    config = json_config(sandbox, [user])
    first = take_snapshot(config, user, label="before-bump")
    second = take_snapshot(config, user)

    result = t3backupd(config, "verify")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{user.name}: {first}  ok" in result.stdout
    assert f"{user.name}: {second}  ok" in result.stdout
    assert "verified 2 snapshot(s) of 1 user(s): 2 ok, 0 bad" in result.stdout

    code, document = verify_json(config)
    assert code == 0
    assert document["ok"] is True and document["check"] == "integrity_check"
    assert outcomes(document) == {first: "ok", second: "ok"}

    code, document = verify_json(config, "--latest", "--quick", "--user", user.name)
    assert code == 0
    assert document["check"] == "quick_check"
    assert outcomes(document) == {second: "ok"}

    # A snapshot whose checksum file is gone cannot be proven good: reported, exit 1.
    (sandbox / "dest" / user.name / f"{first}.sha256").unlink()
    result = t3backupd(config, "verify")
    assert result.returncode == 1
    assert f"{first}  MISSING CHECKSUM" in result.stdout
    assert f"{second}  ok" in result.stdout


@pytest.mark.root
def test_one_flipped_byte_is_a_checksum_mismatch_exit_1_and_restore_refuses_it(
    sandbox: Path, make_user: MakeUser
) -> None:
    user = make_user()
    database = create_state_db(user, size_mb=1, seed=12)
    config = json_config(sandbox, [user])
    good = take_snapshot(config, user)
    damaged = take_snapshot(config, user)
    user_dir = sandbox / "dest" / user.name
    path = user_dir / damaged
    flip_byte(path, path.stat().st_size // 2 + 17)
    assert sha256sum_check(user, user_dir, damaged).returncode != 0  # sha256sum agrees

    result = t3backupd(config, "verify")
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{user.name}: {damaged}  CHECKSUM MISMATCH" in result.stdout
    assert f"{user.name}: {good}  ok" in result.stdout
    assert "1 ok, 1 bad" in result.stdout
    code, document = verify_json(config, "--latest", "--quick")
    assert (code, outcomes(document)) == (1, {damaged: "checksum_mismatch"})

    assert_restore_refused(config, user, damaged, database)
    # `latest` is the damaged one: refused too, never silently replaced by an older one.
    assert_restore_refused(config, user, "latest", database)


@pytest.mark.root
def test_corrupt_pages_under_a_matching_checksum_are_integrity_errors_and_refused(
    sandbox: Path, make_user: MakeUser
) -> None:
    user = make_user()
    database = create_state_db(user, size_mb=2, seed=13)
    config = json_config(sandbox, [user])
    name = take_snapshot(config, user)
    user_dir = sandbox / "dest" / user.name
    corrupt_table_root(user_dir / name, "projection_thread_messages")
    rewrite_checksum(user_dir / name)
    assert sha256sum_check(user, user_dir, name).returncode == 0  # the checksum "matches"

    for quick in ([], ["--quick"]):
        result = t3backupd(config, "verify", *quick)
        assert result.returncode == 1, result.stdout + result.stderr
        assert f"{user.name}: {name}  INTEGRITY ERRORS" in result.stdout
        code, document = verify_json(config, *quick)
        assert (code, outcomes(document)) == (1, {name: "integrity_error"})
    assert_restore_refused(config, user, name, database)


@pytest.mark.root
def test_symlinked_snapshot_is_reported_unreadable_and_never_followed(
    sandbox: Path, make_user: MakeUser
) -> None:
    user = make_user()
    create_state_db(user, size_mb=1, seed=14)
    config = json_config(sandbox, [user])
    good = take_snapshot(config, user)
    user_dir = sandbox / "dest" / user.name
    # A root-only, perfectly valid database: following the link as root would "work".
    secret = sandbox / "root-only.sqlite"
    connection = sqlite3.connect(secret)
    connection.execute("CREATE TABLE secret (value TEXT)")
    connection.execute("INSERT INTO secret VALUES ('TOPSECRET-7f3a')")
    connection.commit()
    connection.close()
    os.chmod(secret, 0o600)
    secret_bytes = secret.read_bytes()
    planted = "state-20991231T000000Z.sqlite"  # newest by name
    os.symlink(secret, user_dir / planted)
    os.lchown(user_dir / planted, user.uid, user.gid)
    secret_digest = hashlib.sha256(secret_bytes).hexdigest()
    (user_dir / f"{planted}.sha256").write_text(f"{secret_digest}  {planted}\n")

    result = t3backupd(config, "verify")
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{planted}  UNREADABLE  (is a symbolic link; not followed)" in result.stdout
    assert f"{good}  ok" in result.stdout
    # --latest means the newest regular snapshot, as `list` and `restore latest` see it.
    code, document = verify_json(config, "--latest")
    assert (code, outcomes(document)) == (0, {good: "ok"})

    target = Path(user.home) / "restored.sqlite"
    refused = t3backupd(
        config, "restore", "--user", user.name, "--snapshot", planted, "--to", str(target)
    )
    assert refused.returncode == 1
    assert "unreadable" in refused.stderr and "symbolic link" in refused.stderr
    assert not target.exists()
    latest = t3backupd(config, "restore", "--user", user.name, "--to", str(target))
    assert latest.returncode == 0, latest.stdout + latest.stderr
    assert good in latest.stdout
    assert target.read_bytes() == (user_dir / good).read_bytes()
    assert b"TOPSECRET" not in target.read_bytes()
    for output in (result, refused, latest):
        assert "TOPSECRET" not in output.stdout + output.stderr
    assert secret.read_bytes() == secret_bytes
    assert os.stat(secret).st_uid == 0


@pytest.mark.root
def test_verify_pass_for_the_daemon_counts_failures_per_user(
    sandbox: Path, make_user: MakeUser
) -> None:
    healthy, damaged = make_user(), make_user()
    for index, user in enumerate((healthy, damaged)):
        create_state_db(user, size_mb=1, seed=20 + index)
    config_path = json_config(sandbox, [healthy, damaged])
    take_snapshot(config_path, healthy)
    take_snapshot(config_path, damaged)
    name = take_snapshot(config_path, damaged)
    path = sandbox / "dest" / damaged.name / name
    flip_byte(path, 200)

    recorded: list[UserResult] = []
    with capture_logs() as logs:
        results = run_verify_pass(
            load_config(config_path), [healthy, damaged], on_result=recorded.append
        )
    assert sorted((r.user.name, verify_failures(r.report)) for r in recorded) == sorted(
        [(healthy.name, 0), (damaged.name, 1)]
    )
    assert [r.user.name for r in results] == [healthy.name, damaged.name]
    assert all(r.finished > 0 and r.report.ok for r in results)
    events = {(e["user"], e["failures"]) for e in logs if e["event"] == "verify"}
    assert events == {(healthy.name, 0), (damaged.name, 1)}
    bad = next(e for e in logs if e["event"] == "verify" and e["user"] == damaged.name)
    assert bad["bad"] == {name: "checksum_mismatch"} and bad["log_level"] == "warning"

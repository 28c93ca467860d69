"""The snapshot engine end to end: real users, real WAL databases written live by a
process running as the user, the real CLI spawning real setuid workers. Needs root."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import stat
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from support.snapshots import MakeUser, json_config, snapshot_events, snapshot_outcomes
from support.system import (
    PYTHON,
    create_state_db,
    live_writer,
    run_as,
    sha256sum_check,
    snapshot_files,
    state_path,
    t3backupd,
    write_config,
)

from t3backupd.core.naming import parse_name
from t3backupd.core.usermap import User
from t3backupd_dev.sampledb import check_consistent_prefix


def config_for(sandbox: Path, users: list[User], method: str = "backup", keep: int = 14) -> Path:
    extra = f'[snapshot]\nmethod = "{method}"\n[retention]\nkeep = {keep}\n'
    return json_config(sandbox, users, extra)


def published(result_stdout: str, user: User) -> str:
    """The snapshot name the CLI printed for `user` (fails the test if none)."""
    for line in result_stdout.splitlines():
        if line.startswith(f"{user.name}: ok "):
            return line.split()[2]
    raise AssertionError(f"no published snapshot for {user.name} in {result_stdout!r}")


def assert_design_modes(dest: Path, user: User) -> None:
    """DESIGN's owners and modes, and nothing but snapshots, checksums and the lock."""
    root_info = os.lstat(dest)
    assert stat.S_ISDIR(root_info.st_mode)
    assert (root_info.st_uid, stat.S_IMODE(root_info.st_mode)) == (0, 0o755)
    user_dir = dest / user.name
    info = os.lstat(user_dir)
    assert stat.S_ISDIR(info.st_mode)
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (user.uid, user.gid, 0o700)
    names = sorted(os.listdir(user_dir))
    snapshots = snapshot_files(user_dir)
    assert snapshots, "no snapshot published"
    expected = {".lock"} | set(snapshots) | {name + ".sha256" for name in snapshots}
    assert set(names) == expected, f"unexpected files beside snapshots: {names}"
    for name in names:
        file_info = os.lstat(user_dir / name)
        assert stat.S_ISREG(file_info.st_mode), name
        assert (file_info.st_uid, file_info.st_gid) == (user.uid, user.gid), name
        assert stat.S_IMODE(file_info.st_mode) == 0o600, name


def integrity(path: Path) -> list[str]:
    connection = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)
    try:
        return [row[0] for row in connection.execute("PRAGMA integrity_check")]
    finally:
        connection.close()


@pytest.mark.root
@pytest.mark.parametrize("method", ["backup", "vacuum"])
def test_snapshot_under_live_writer_is_consistent_verified_and_checksummed(
    sandbox: Path, make_user: MakeUser, method: str
) -> None:
    user = make_user()
    database = create_state_db(user, size_mb=40, seed=7)
    config = config_for(sandbox, [user], method=method)
    with live_writer(user, database, rate=1000) as writer:
        time.sleep(0.5)
        result = t3backupd(config, "snapshot")
        time.sleep(0.5)
    assert result.returncode == 0, result.stdout + result.stderr
    stats = writer.stats
    # The app never saw an error (SQLITE_BUSY included). How fast it could commit during
    # the copy is a measurement, not a test: bench/ has it (a rate asserted here failed
    # a full run on a loaded 2-core machine, 163 commits/s against 200).
    assert stats["errors"] == 0, stats["error_messages"]

    name = published(result.stdout, user)
    user_dir = sandbox / "dest" / user.name
    snapshot = user_dir / name
    assert integrity(snapshot) == ["ok"]
    last = check_consistent_prefix(snapshot)
    # The copy happened while the writer was committing: it holds some, not all, of them.
    assert stats["first_sequence"] < last < stats["last_sequence"], (last, stats)

    check = sha256sum_check(user, user_dir, name)
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"{name}: OK" in check.stdout
    assert_design_modes(sandbox / "dest", user)

    events = snapshot_events(result.stderr)
    assert [(event["user"], event["status"], event["snapshot"]) for event in events] == [
        (user.name, "ok", name)
    ]
    # The source stays the app's: still WAL, still owned by the user, no extra files.
    assert os.stat(database).st_uid == user.uid
    allowed = {database.name, database.name + "-wal", database.name + "-shm"}
    assert set(os.listdir(database.parent)) <= allowed


OPERATIONS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def documented_data_limit_mib() -> int:
    """The data memory a pass needs, as docs/operations.md ("What a pass needs") says."""
    found = re.search(r"under (\d+) MiB of data memory per process", OPERATIONS.read_text())
    assert found is not None, "docs/operations.md no longer says what memory a pass needs"
    return int(found.group(1))


@pytest.mark.root
def test_a_pass_runs_within_the_documented_data_memory_on_a_larger_database(
    sandbox: Path, make_user: MakeUser
) -> None:
    # RLIMIT_DATA counts anonymous memory and thread stacks, not file mappings: a pass that
    # held the database (or a copy's pages) in its own memory would fail here, in the CLI
    # or in the worker, which inherits the limit.
    limit = documented_data_limit_mib()
    user = make_user()
    database = create_state_db(user, size_mb=limit * 1.5, seed=3)
    assert database.stat().st_size > limit << 20
    config = config_for(sandbox, [user])
    result = subprocess.run(
        ["prlimit", f"--data={limit << 20}", "--", PYTHON, "-I", "-m", "t3backupd", "-c",
         str(config), "snapshot"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "T3BACKUPD_CONFIG": ""},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    name = published(result.stdout, user)
    assert integrity(sandbox / "dest" / user.name / name) == ["ok"]


@pytest.mark.root
def test_pre_created_root_owned_user_dir_is_fixed_to_user_0700(
    sandbox: Path, make_user: MakeUser
) -> None:
    user = make_user()
    create_state_db(user, size_mb=1)
    dest = sandbox / "dest"
    (dest / user.name).mkdir(parents=True, mode=0o755)
    os.chmod(dest / user.name, 0o755)
    result = t3backupd(config_for(sandbox, [user]), "snapshot")
    assert result.returncode == 0, result.stdout + result.stderr
    assert_design_modes(dest, user)


@pytest.mark.root
@pytest.mark.parametrize("breakage", ["directory", "corrupt"])
def test_one_users_failure_does_not_stop_the_next_user(
    sandbox: Path, make_user: MakeUser, breakage: str
) -> None:
    broken, healthy = make_user(), make_user()
    source = state_path(broken)
    if breakage == "directory":
        run_as(broken, ["mkdir", "-p", str(source)])
    else:
        run_as(broken, ["mkdir", "-p", str(source.parent)])
        run_as(broken, ["sh", "-c", f"head -c 65536 /dev/urandom > {source}"])
    create_state_db(healthy, size_mb=2)
    result = t3backupd(config_for(sandbox, [broken, healthy]), "snapshot")
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{broken.name}: FAILED sqlite_error" in result.stdout
    name = published(result.stdout, healthy)
    healthy_dir = sandbox / "dest" / healthy.name
    assert snapshot_files(healthy_dir) == [name]
    assert sha256sum_check(healthy, healthy_dir, name).returncode == 0
    assert snapshot_files(sandbox / "dest" / broken.name) == []
    assert not [n for n in os.listdir(sandbox / "dest" / broken.name) if n.startswith(".t3")]
    assert snapshot_outcomes(result.stderr) == {
        broken.name: ("failed", "sqlite_error"),
        healthy.name: ("ok", None),
    }


@pytest.mark.root
def test_user_without_database_is_skipped_and_pass_exits_zero(
    sandbox: Path, make_user: MakeUser
) -> None:
    user = make_user()
    result = t3backupd(config_for(sandbox, [user]), "snapshot")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{user.name}: skipped" in result.stdout
    assert snapshot_files(sandbox / "dest" / user.name) == []
    [event] = snapshot_events(result.stderr)
    assert (event["status"], event["reason"]) == ("skipped", "no_source")


def plant_as(user: User, path: Path, content: str) -> None:
    """Create a file as `user` (the user's backup dir is theirs: 0700)."""
    run_as(user, ["sh", "-c", 'printf %s "$2" > "$1"', "sh", str(path), content])


@pytest.mark.root
def test_retention_keeps_newest_unlabelled_plus_labelled_and_prunes_legacy(
    sandbox: Path, make_user: MakeUser
) -> None:
    user = make_user()
    create_state_db(user, size_mb=1)
    config = config_for(sandbox, [user], keep=3)
    first = t3backupd(config, "snapshot", "--label", "pre-upgrade")
    assert first.returncode == 0, first.stdout + first.stderr
    user_dir = sandbox / "dest" / user.name
    legacy = ["state-20200101-120000.sqlite", "state-20200102-120000.sqlite"]
    strangers = ["notes.txt", "state-latest.sqlite", "state-20200101-120000.sqlite.bak"]
    for name in legacy:
        plant_as(user, user_dir / name, "legacy snapshot")
        plant_as(user, user_dir / (name + ".sha256"), "0" * 64 + f"  {name}\n")
    for name in strangers:
        plant_as(user, user_dir / name, f"not ours: {name}")

    listing = json.loads(t3backupd(config, "list", "--json").stdout)
    listed = {item["name"] for item in listing["users"][0]["snapshots"]}
    assert set(legacy) <= listed, "legacy-named snapshots must be listed"

    unlabelled = []
    for _ in range(5):
        result = t3backupd(config, "snapshot")
        assert result.returncode == 0, result.stdout + result.stderr
        unlabelled.append(published(result.stdout, user))
    last = t3backupd(config, "snapshot", "--label", "manual.2")
    assert last.returncode == 0, last.stdout + last.stderr
    labelled = [published(first.stdout, user), published(last.stdout, user)]

    assert len(set(unlabelled)) == 5
    expected = set(unlabelled[-3:]) | set(labelled)
    assert set(snapshot_files(user_dir)) - {"state-latest.sqlite"} == expected
    for name in expected:
        assert (user_dir / (name + ".sha256")).exists(), name
    for name in legacy:
        assert not (user_dir / name).exists() and not (user_dir / (name + ".sha256")).exists()
    for name in strangers:
        assert (user_dir / name).read_text() == f"not ours: {name}"

    listing_result = t3backupd(config, "list", "--json")
    assert listing_result.returncode == 0, listing_result.stderr
    [entry] = json.loads(listing_result.stdout)["users"]
    assert entry["user"] == user.name and entry["error"] is None
    rows = entry["snapshots"]
    assert {row["name"] for row in rows} == expected
    assert {row["name"]: row["label"] for row in rows if row["label"]} == {
        labelled[0]: "pre-upgrade",
        labelled[1]: "manual.2",
    }
    times = [row["timestamp"] for row in rows]
    assert times == sorted(times, reverse=True), "list is newest first"
    assert all(row["has_checksum"] and row["bytes"] > 0 for row in rows)


@pytest.mark.root
def test_two_passes_within_one_second_both_publish_under_different_names(
    sandbox: Path, make_user: MakeUser
) -> None:
    user = make_user()
    create_state_db(user, size_mb=1)
    config = config_for(sandbox, [user])
    # Start right after a second boundary so both passes most likely share one second.
    time.sleep(1 - time.time() % 1)
    first = t3backupd(config, "snapshot")
    second = t3backupd(config, "snapshot")
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    user_dir = sandbox / "dest" / user.name
    names = [published(first.stdout, user), published(second.stdout, user)]
    assert names[0] != names[1]
    assert snapshot_files(user_dir) == sorted(names)
    for name in names:
        assert sha256sum_check(user, user_dir, name).returncode == 0


@pytest.mark.root
def test_publish_never_replaces_an_existing_snapshot_name(
    sandbox: Path, make_user: MakeUser
) -> None:
    user = make_user()
    create_state_db(user, size_mb=1)
    config = config_for(sandbox, [user])
    assert t3backupd(config, "snapshot").returncode == 0
    user_dir = sandbox / "dest" / user.name
    # Occupy every name of the next few seconds: the pass must take a free one.
    now = int(time.time())
    occupied = []
    for offset in range(0, 6):
        stamp = datetime.fromtimestamp(now + offset, UTC).strftime("%Y%m%dT%H%M%SZ")
        name = f"state-{stamp}.sqlite"
        if not (user_dir / name).exists():
            plant_as(user, user_dir / name, f"occupied {offset}")
            occupied.append(name)
    result = t3backupd(config, "snapshot")
    assert result.returncode == 0, result.stdout + result.stderr
    name = published(result.stdout, user)
    assert name not in occupied
    parsed = parse_name(name)
    assert parsed is not None and parsed.time.timestamp() >= now + 6
    for occupied_name in occupied:
        assert (user_dir / occupied_name).read_text().startswith("occupied")
    assert sha256sum_check(user, user_dir, name).returncode == 0


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.mark.root
def test_bad_config_exits_2_with_one_line_naming_every_problem(
    sandbox: Path, make_user: MakeUser
) -> None:
    user = make_user()
    config = write_config(
        sandbox,
        [user],
        sandbox / "dest",
        extra='[snapshot]\nmethod = "rsync"\n[retention]\nkeep = 0\nbogus = 1\n',
    )
    result = t3backupd(config, "snapshot")
    assert result.returncode == 2
    line = one_error_line(result.stderr)
    assert str(config) in line
    for key in ("snapshot.method", "retention.keep", "retention.bogus"):
        assert key in line, line
    assert not (sandbox / "dest").exists()


@pytest.mark.root
def test_unknown_user_and_invalid_label_exit_2_with_one_line(
    sandbox: Path, make_user: MakeUser
) -> None:
    user = make_user()
    create_state_db(user, size_mb=1)
    config = config_for(sandbox, [user])
    nosuch = t3backupd(config, "snapshot", "--user", "nosuch")
    assert nosuch.returncode == 2
    assert "nosuch" in one_error_line(nosuch.stderr)
    for label in ("bad label", "../x", "x" * 65, ".."):
        result = t3backupd(config, "snapshot", "--label", label)
        assert result.returncode == 2, (label, result.stdout)
        assert "label" in one_error_line(result.stderr)
    assert not (sandbox / "dest" / user.name).exists() or not snapshot_files(
        sandbox / "dest" / user.name
    )
    ok = t3backupd(config, "snapshot", "--user", user.name)
    assert ok.returncode == 0, ok.stdout + ok.stderr

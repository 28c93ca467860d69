"""Restore end to end: real users, real WAL databases, the real CLI spawning real setuid
workers. Covers `--to`, the in-place runbook (labelled snapshot, restore, undo), the
open-process refusal and `--force` under an open reader, and hostile targets. Needs root."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from support.snapshots import MakeUser, json_config, take_snapshot, temps_in, worker_pids
from support.system import (
    PYTHON,
    create_state_db,
    run_as,
    sha256sum_check,
    snapshot_files,
    spawn_as,
    t3backupd,
)

from t3backupd.core.naming import format_name
from t3backupd.core.usermap import User

# Content of a database, read as its owner (never as root: SQLite may create -shm).
DIGEST_SCRIPT = (
    "import sys; from t3backupd_dev.sampledb import content_digest;"
    " print(content_digest(sys.argv[1]))"
)
FINGERPRINT_SQL = (
    "SELECT (SELECT count(*) FROM orchestration_events),"
    " (SELECT coalesce(max(sequence), 0) FROM orchestration_events),"
    " (SELECT count(*) FROM projection_thread_messages),"
    " (SELECT coalesce(sum(length(payload_json)), 0) FROM orchestration_events),"
    " (SELECT count(*) FROM sqlite_schema)"
)
# A reader like the app's: one connection held open throughout, short read transactions
# (each held a little while, so some overlap the restore), recording every distinct state.
READER_SCRIPT = f"""
import json, os, sqlite3, sys, time
database, ready, stop, out = sys.argv[1:5]
connection = sqlite3.connect(database, timeout=5, isolation_level=None)
seen, errors = [], []
def fingerprint():
    connection.execute("BEGIN")
    try:
        row = list(connection.execute({FINGERPRINT_SQL!r}).fetchone())
        time.sleep(0.02)
        return row
    finally:
        connection.execute("COMMIT")
seen.append(fingerprint())
open(ready, "w").close()
while not os.path.exists(stop):
    try:
        row = fingerprint()
    except sqlite3.Error as error:
        errors.append(str(error))
        time.sleep(0.01)
        continue
    if row != seen[-1]:
        seen.append(row)
check = [r[0] for r in connection.execute("PRAGMA quick_check")]
with open(out, "w") as handle:
    json.dump({{"seen": seen, "errors": errors, "quick_check": check}}, handle)
"""


def digest_as(user: User, path: Path) -> str:
    return run_as(user, [PYTHON, "-I", "-c", DIGEST_SCRIPT, str(path)]).stdout.strip()


def fingerprint_as(user: User, path: Path) -> list[int]:
    script = (
        "import json, sqlite3, sys; c = sqlite3.connect(f'file:{sys.argv[1]}?mode=ro', uri=True);"
        f"print(json.dumps(list(c.execute({FINGERPRINT_SQL!r}).fetchone())))"
    )
    return list(json.loads(run_as(user, [PYTHON, "-I", "-c", script, str(path)]).stdout))


def is_wal(path: Path) -> bool:
    """The file format bytes 18-19 of the header: 2, 2 means WAL mode."""
    header = path.read_bytes()[:100]
    return header[:16] == b"SQLite format 3\x00" and header[18:20] == b"\x02\x02"


def change_database(user: User, database: Path) -> None:
    """Simulate the app (and a forward schema migration) changing the live database."""
    run_as(user, [PYTHON, "-I", "-m", "t3backupd_dev.sampledb", "write", str(database),
                  "--duration", "0.3", "--rate", "200"])  # fmt: skip
    migrate = (
        "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]);"
        "c.execute('CREATE TABLE upgrade_marker (version TEXT)');"
        "c.execute(\"INSERT INTO upgrade_marker VALUES ('0.0.99')\"); c.commit(); c.close()"
    )
    run_as(user, [PYTHON, "-I", "-c", migrate, str(database)])


@pytest.mark.root
def test_restore_to_writes_a_verified_0600_copy_equal_to_the_snapshot(
    sandbox: Path, make_user: MakeUser
) -> None:
    user = make_user()
    database = create_state_db(user, size_mb=2, seed=1)
    config = json_config(sandbox, [user])
    name = take_snapshot(config, user)
    snapshot = sandbox / "dest" / user.name / name
    change_database(user, database)
    live_before = digest_as(user, database)
    assert live_before != digest_as(user, snapshot)

    target = Path(user.home) / "restored.sqlite"
    result = t3backupd(config, "restore", "--user", user.name, "--to", str(target))
    assert result.returncode == 0, result.stdout + result.stderr
    assert name in result.stdout
    assert digest_as(user, target) == digest_as(user, snapshot)
    info = os.lstat(target)
    assert stat.S_ISREG(info.st_mode)
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (user.uid, user.gid, 0o600)
    assert target.read_bytes() == snapshot.read_bytes()
    assert digest_as(user, database) == live_before, "restore --to touched the live database"


@pytest.mark.root
def test_runbook_in_place_restore_returns_labelled_state_and_undo_returns_the_upgrade(
    sandbox: Path, make_user: MakeUser
) -> None:
    user = make_user()
    database = create_state_db(user, size_mb=2, seed=2)
    os.chmod(database, 0o640)  # not the default: "kept" must mean kept
    config = json_config(sandbox, [user])
    user_dir = sandbox / "dest" / user.name
    # Runbook step 1: a labelled snapshot before the bump.
    labelled = take_snapshot(config, user, label="before-t3-0.0.99")
    take_snapshot(config, user)  # a newer unlabelled one: the label must pick the right one
    # The bad upgrade: the new version migrates the schema forward and writes.
    change_database(user, database)
    upgraded = digest_as(user, database)
    before = os.stat(database)

    # Runbook: (t3-serve stopped) restore in place from the label.
    result = t3backupd(
        config, "restore", "--user", user.name, "--snapshot", "before-t3-0.0.99", "--in-place"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"restore --user {user.name} --snapshot pre-restore --in-place" in result.stdout
    assert digest_as(user, database) == digest_as(user, user_dir / labelled)
    after = os.stat(database)
    assert (after.st_ino, after.st_uid, after.st_gid) == (before.st_ino, user.uid, user.gid)
    assert stat.S_IMODE(after.st_mode) == 0o640
    assert is_wal(database), "the app's database must stay in WAL mode"
    assert set(os.listdir(database.parent)) <= {
        "state.sqlite",
        "state.sqlite-wal",
        "state.sqlite-shm",
    }
    for leftover in database.parent.iterdir():
        assert os.lstat(leftover).st_uid == user.uid, leftover

    # The state before the restore was kept as a verified pre-restore snapshot.
    pre = [name for name in snapshot_files(user_dir) if name.endswith("--pre-restore.sqlite")]
    assert len(pre) == 1, snapshot_files(user_dir)
    assert pre[0] in result.stdout
    assert digest_as(user, user_dir / pre[0]) == upgraded
    assert sha256sum_check(user, user_dir, pre[0]).returncode == 0

    # Undo, exactly as printed: the upgraded state comes back.
    undo = t3backupd(
        config, "restore", "--user", user.name, "--snapshot", "pre-restore", "--in-place"
    )
    assert undo.returncode == 0, undo.stdout + undo.stderr
    assert digest_as(user, database) == upgraded
    assert is_wal(database)
    assert stat.S_IMODE(os.stat(database).st_mode) == 0o640


@pytest.mark.root
def test_in_place_is_refused_while_a_user_process_holds_it_and_force_is_consistent(
    sandbox: Path, make_user: MakeUser
) -> None:
    user = make_user()
    database = create_state_db(user, size_mb=2, seed=3)
    config = json_config(sandbox, [user])
    user_dir = sandbox / "dest" / user.name
    name = take_snapshot(config, user)
    change_database(user, database)
    changed = digest_as(user, database)
    expected_before = fingerprint_as(user, database)
    expected_after = fingerprint_as(user, user_dir / name)
    assert expected_before != expected_after

    scratch = Path(user.home)
    ready, stop, out = scratch / "ready", scratch / "stop", scratch / "reader.json"
    reader = spawn_as(
        user, [PYTHON, "-I", "-c", READER_SCRIPT, str(database), str(ready), str(stop), str(out)]
    )
    try:
        deadline = time.monotonic() + 20
        while not ready.exists():
            assert reader.poll() is None and time.monotonic() < deadline, "reader did not start"
            time.sleep(0.02)
        before_files = snapshot_files(user_dir)
        refused = t3backupd(config, "restore", "--user", user.name, "--in-place")
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert f"pid {reader.pid} (" in refused.stderr
        assert "in_use" in refused.stderr
        assert snapshot_files(user_dir) == before_files, "refused, yet a snapshot was taken"
        assert digest_as(user, database) == changed

        forced = t3backupd(config, "restore", "--user", user.name, "--in-place", "--force")
        assert forced.returncode == 0, forced.stdout + forced.stderr
        assert f"pid {reader.pid}" in forced.stdout  # says it was forced past the reader
        time.sleep(0.3)  # let the reader observe the restored state
    finally:
        stop.touch()
        reader.wait(timeout=30)
    observed = json.loads(out.read_text())
    assert observed["errors"] == []
    assert observed["quick_check"] == ["ok"]
    # Every state the open reader saw was the old one or the restored one, in that order.
    assert observed["seen"] == [expected_before, expected_after]
    assert digest_as(user, database) == digest_as(user, user_dir / name)
    assert is_wal(database)


@pytest.mark.root
def test_restore_to_an_unwritable_or_existing_path_is_refused_without_change(
    sandbox: Path, make_user: MakeUser
) -> None:
    user = make_user()
    create_state_db(user, size_mb=1, seed=4)
    config = json_config(sandbox, [user])
    take_snapshot(config, user)

    unwritable = sandbox / "root-only" / "restored.sqlite"  # root's 0755 dir
    unwritable.parent.mkdir(mode=0o755)
    result = t3backupd(config, "restore", "--user", user.name, "--to", str(unwritable))
    assert result.returncode == 1
    assert "permission" in result.stderr and "Permission denied" in result.stderr
    assert not unwritable.exists()

    existing = Path(user.home) / "existing.sqlite"
    run_as(user, ["sh", "-c", 'printf "keep me" > "$1"', "sh", str(existing)])
    result = t3backupd(config, "restore", "--user", user.name, "--to", str(existing))
    assert result.returncode == 1
    assert "already exists" in result.stderr
    assert existing.read_bytes() == b"keep me"

    # A link at the target is an existing path too: never followed, never written through.
    secret = sandbox / "root-secret"
    secret.write_bytes(b"root only")
    os.chmod(secret, 0o600)
    link = Path(user.home) / "link.sqlite"
    run_as(user, ["ln", "-s", str(secret), str(link)])
    result = t3backupd(config, "restore", "--user", user.name, "--to", str(link))
    assert result.returncode == 1
    assert "already exists" in result.stderr
    assert secret.read_bytes() == b"root only"
    assert os.lstat(link).st_mode & stat.S_IFLNK

    missing_dir = Path(user.home) / "no" / "such" / "dir.sqlite"
    result = t3backupd(config, "restore", "--user", user.name, "--to", str(missing_dir))
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if not line.startswith("{")]
    assert len(lines) == 1 and "does not exist" in lines[0], lines


@pytest.mark.root
def test_restore_to_inside_the_backup_directory_is_refused_by_any_spelling(
    sandbox: Path, make_user: MakeUser
) -> None:
    """A restored copy in `<dest>/<user>` would count as a snapshot (a 2099 name as
    "latest"): refused whether named directly, through `..`, or through a user's link."""
    user = make_user()
    create_state_db(user, size_mb=1, seed=14)
    config = json_config(sandbox, [user])
    name = take_snapshot(config, user)
    mine = sandbox / "dest" / user.name
    planted = "state-20990101T000000Z.sqlite"
    link = Path(user.home) / "backups"
    run_as(user, ["ln", "-s", str(mine), str(link)])
    for target in (
        mine / planted,
        Path(user.home) / ".." / ".." / str(mine).lstrip("/") / planted,
        link / planted,
        sandbox / "dest",
    ):
        result = t3backupd(config, "restore", "--user", user.name, "--to", str(target))
        assert result.returncode == 1, result.stdout + result.stderr
        lines = [line for line in result.stderr.splitlines() if not line.startswith("{")]
        assert len(lines) == 1 and "inside the backup directory" in lines[0], lines
    assert not any(p.name == planted for p in mine.iterdir())
    listed = t3backupd(config, "list", "--json")
    assert [s["name"] for s in json.loads(listed.stdout)["users"][0]["snapshots"]] == [name]


@pytest.mark.root
def test_at_takes_the_time_exactly_as_list_prints_it(sandbox: Path, make_user: MakeUser) -> None:
    user = make_user()
    create_state_db(user, size_mb=1, seed=15)
    config = json_config(sandbox, [user], extra='[schedule]\ntimezone = "America/New_York"\n')
    first = take_snapshot(config, user)
    time.sleep(1.05)
    take_snapshot(config, user)
    listed = t3backupd(config, "list").stdout
    (row,) = [line.split() for line in listed.splitlines() if line.startswith(f"  {first}")]
    printed = f"{row[1]} {row[2]}"  # e.g. 2026-12-07 21:23:11Z
    target = Path(user.home) / "at.sqlite"
    result = t3backupd(config, "restore", "--user", user.name, "--at", printed, "--to", str(target))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"restored {first}" in result.stdout, result.stdout


@pytest.mark.root
@pytest.mark.parametrize(
    "snapshot",
    ["../state-20250101T000000Z.sqlite", "..", "a/b", "/etc/shadow", "state-x/../y"],
)
def test_snapshot_name_with_slash_or_dotdot_is_refused_before_anything_runs(
    sandbox: Path, make_user: MakeUser, snapshot: str
) -> None:
    user = make_user()
    database = create_state_db(user, size_mb=1, seed=5)
    config = json_config(sandbox, [user])
    live = database.read_bytes()
    for where in (["--in-place"], ["--to", str(Path(user.home) / "out.sqlite")]):
        result = t3backupd(config, "restore", "--user", user.name, "--snapshot", snapshot, *where)
        assert result.returncode == 2, result.stdout + result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "never contains '/' or '..'" in lines[0], lines
        assert not (sandbox / "dest").exists(), "a worker ran (it would have created dest)"
    assert database.read_bytes() == live
    assert not (Path(user.home) / "out.sqlite").exists()


@pytest.mark.root
def test_unknown_snapshot_or_label_fails_with_one_line_and_writes_nothing(
    sandbox: Path, make_user: MakeUser
) -> None:
    user = make_user()
    create_state_db(user, size_mb=1, seed=6)
    config = json_config(sandbox, [user])
    take_snapshot(config, user)
    target = Path(user.home) / "out.sqlite"
    for snapshot in ("no-such-label", "state-20000101T000000Z.sqlite"):
        result = t3backupd(
            config, "restore", "--user", user.name, "--snapshot", snapshot, "--to", str(target)
        )
        assert result.returncode == 1
        lines = [line for line in result.stderr.splitlines() if not line.startswith("{")]
        assert len(lines) == 1 and "not_found" in lines[0] and snapshot in lines[0], lines
    assert not target.exists()


@pytest.mark.root
def test_in_place_restore_of_a_lost_database_recreates_it_in_wal_mode(
    sandbox: Path, make_user: MakeUser
) -> None:
    user = make_user()
    database = create_state_db(user, size_mb=1, seed=7)
    config = json_config(sandbox, [user])
    name = take_snapshot(config, user)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{database}{suffix}").unlink(missing_ok=True)

    result = t3backupd(config, "restore", "--user", user.name, "--in-place")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "nothing to undo" in result.stdout
    # No database, no pre-restore snapshot: nothing may say one was taken (issue 21, 8).
    assert "from before the pre-restore snapshot" not in result.stdout, result.stdout
    assert "no pre-restore snapshot was taken" in result.stdout, result.stdout
    assert [p.name for p in (sandbox / "dest" / user.name).glob("*pre-restore*")] == []
    assert is_wal(database), "a recreated database must be in the app's WAL mode"
    info = os.stat(database)
    assert (info.st_uid, info.st_gid) == (user.uid, user.gid)
    assert digest_as(user, database) == digest_as(user, sandbox / "dest" / user.name / name)


@pytest.mark.root
def test_a_killed_restore_worker_leaves_no_file_at_the_final_name(
    sandbox: Path, make_user: MakeUser
) -> None:
    """The copy is written to a hidden temp beside the target and linked into place only
    once verified: SIGKILL at any point before leaves nothing at `--to`."""
    user = make_user()
    create_state_db(user, size_mb=48, seed=5)
    config = json_config(sandbox, [user])
    take_snapshot(config, user)
    target_dir = Path(user.home) / "restore-here"
    run_as(user, ["mkdir", str(target_dir)])
    target = target_dir / "restored.sqlite"
    command = [PYTHON, "-I", "-m", "t3backupd", "-c", str(config), "restore",
               "--user", user.name, "--to", str(target)]  # fmt: skip
    cli = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "T3BACKUPD_CONFIG": ""},
    )  # fmt: skip
    killed = None
    deadline = time.monotonic() + 60
    while killed is None and time.monotonic() < deadline and cli.poll() is None:
        if temps_in(target_dir) and not target.exists():
            for pid in worker_pids(user):
                os.kill(pid, signal.SIGKILL)
                killed = pid
        time.sleep(0.001)
    stdout, stderr = cli.communicate(timeout=60)
    assert killed is not None, f"never saw the restore in progress: {stdout}{stderr}"
    assert cli.returncode != 0, stdout
    assert "worker_crashed" in stderr, stderr
    assert not target.exists(), "a killed restore left a file at the final name"
    assert all(name.startswith(".t3backupd-") for name in os.listdir(target_dir))


# The app as some apps are: a fresh connection for every transaction (so the holder check
# may not see it), each commit recorded once COMMIT has returned.
REOPENING_APP = """
import os, sqlite3, sys, time
database, ready, stop, out = sys.argv[1:5]
seq = 0
with open(out, "w", buffering=1) as log:
    while not os.path.exists(stop):
        seq += 1
        connection = sqlite3.connect(database, timeout=30, isolation_level=None)
        try:
            connection.execute("BEGIN IMMEDIATE")
            connection.execute("CREATE TABLE IF NOT EXISTS app_log (seq INTEGER PRIMARY KEY)")
            connection.execute("INSERT INTO app_log VALUES (?)", (seq,))
            connection.execute("COMMIT")
            log.write(f"{seq}\\n")
        except sqlite3.Error as error:
            log.write(f"error {error}\\n")
        finally:
            connection.close()
        if seq == 20:
            open(ready, "w").close()
        time.sleep(0.002)
"""


def app_log_seqs(user: User, path: Path) -> set[int]:
    script = (
        "import json, sqlite3, sys; c = sqlite3.connect(f'file:{sys.argv[1]}?mode=ro', uri=True);"
        "print(json.dumps([r[0] for r in c.execute('SELECT seq FROM app_log')]))"
    )
    return set(json.loads(run_as(user, [PYTHON, "-I", "-c", script, str(path)]).stdout))


@pytest.mark.root
def test_no_commit_lands_between_the_pre_restore_snapshot_and_an_in_place_restore(
    sandbox: Path, make_user: MakeUser
) -> None:
    """Every commit of an app that reopens between transactions is either in the
    pre-restore snapshot or applied on top of the restored state: none is lost. (--force:
    the app may be caught with the database open at the check; the lock is the point.)"""
    user = make_user()
    database = create_state_db(user, size_mb=4, seed=7)
    create = (
        "import sqlite3, sys; sqlite3.connect(sys.argv[1])"
        ".execute('CREATE TABLE app_log (seq INTEGER PRIMARY KEY)')"
    )
    run_as(user, [PYTHON, "-I", "-c", create, str(database)])
    config = json_config(sandbox, [user])
    labelled = take_snapshot(config, user, label="good")
    scratch = Path(user.home) / "app"
    run_as(user, ["mkdir", str(scratch)])
    ready, stop, out = scratch / "ready", scratch / "stop", scratch / "committed"
    app = spawn_as(
        user, [PYTHON, "-I", "-c", REOPENING_APP, str(database), str(ready), str(stop), str(out)]
    )
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert app.poll() is None and time.monotonic() < deadline, "app did not start"
            time.sleep(0.01)
        result = t3backupd(
            config, "restore", "--user", user.name, "--snapshot", labelled, "--in-place", "--force"
        )
        assert result.returncode == 0, result.stdout + result.stderr
        time.sleep(0.5)  # commits after the restore, on top of it
    finally:
        run_as(user, ["touch", str(stop)])
        app.wait(30)
    lines = out.read_text().splitlines()
    assert not [line for line in lines if line.startswith("error")], lines[:5]
    committed = {int(line) for line in lines}
    (pre_name,) = [
        name for name in snapshot_files(sandbox / "dest" / user.name) if "pre-restore" in name
    ]
    assert pre_name in result.stdout
    in_safety = app_log_seqs(user, sandbox / "dest" / user.name / pre_name)
    after = app_log_seqs(user, database)
    assert in_safety and after, "the app did not commit on both sides of the restore"
    # The restored state had no app_log rows: all rows now are commits after the restore.
    assert min(after) > max(in_safety)
    lost = committed - in_safety - after
    assert not lost, f"{len(lost)} commits lost between the safety snapshot and the restore"
    assert "write lock was held" in result.stdout


# --- issue 20 item 7: after a clock fault, `latest` and `--at` never restore stale data -----


def plant_future_copy(user: User, directory: Path, source: str) -> str:
    """As the user: a copy of the snapshot `source` under a name dated a year ahead, with
    its checksum (what a clock that ran a year ahead leaves behind, or a planted name)."""
    planted = format_name(datetime.now(UTC) + timedelta(days=365))
    run_as(user, ["cp", str(directory / source), str(directory / planted)])
    run_as(user, ["sh", "-c", f"cd {directory} && sha256sum {planted} > {planted}.sha256"])
    return planted


@pytest.mark.root
def test_latest_and_at_skip_a_future_dated_older_snapshot_and_list_marks_it(
    sandbox: Path, make_user: MakeUser
) -> None:
    user = make_user()
    database = create_state_db(user, size_mb=1, seed=21)
    config = json_config(sandbox, [user])
    stale = take_snapshot(config, user)
    change_database(user, database)
    current = take_snapshot(config, user)
    directory = sandbox / "dest" / user.name
    planted = plant_future_copy(user, directory, stale)
    assert digest_as(user, directory / stale) != digest_as(user, directory / current)
    skipped = f"{user.name}: skipped {planted}: dated in the future"

    for how in ([], ["--at", "2099-01-01"]):
        target = Path(user.home) / f"restored{len(how)}.sqlite"
        result = t3backupd(config, "restore", "--user", user.name, *how, "--to", str(target))
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"restored {current}" in result.stdout, (how, result.stdout)
        assert target.read_bytes() == (directory / current).read_bytes()
        notes = [line for line in result.stdout.splitlines() if "skipped" in line]
        assert len(notes) == 1 and notes[0].startswith(skipped), (how, result.stdout)

    # In place: the check worker's choice is what is restored, and it says so too.
    result = t3backupd(config, "restore", "--user", user.name, "--in-place")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"restored {current} into" in result.stdout and skipped in result.stdout
    assert digest_as(user, database) == digest_as(user, directory / current)

    listing = t3backupd(config, "list", "--user", user.name)
    assert listing.returncode == 0, listing.stdout + listing.stderr
    line = next(line for line in listing.stdout.splitlines() if planted in line)
    assert "in the future" in line and "-" not in line.split(planted)[1].split("Z", 1)[1], line
    assert " ago" in next(line for line in listing.stdout.splitlines() if current in line)
    shown = t3backupd(config, "list", "--user", user.name, "--json")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    snapshots = json.loads(shown.stdout)["users"][0]["snapshots"]
    assert {entry["name"]: entry["in_future"] for entry in snapshots if entry["label"] is None} \
        == {planted: True, current: False, stale: False}  # fmt: skip


@pytest.mark.root
def test_latest_with_only_future_dated_snapshots_is_refused_in_one_line(
    sandbox: Path, make_user: MakeUser
) -> None:
    user = make_user()
    create_state_db(user, size_mb=1, seed=22)
    config = json_config(sandbox, [user])
    only = take_snapshot(config, user)
    directory = sandbox / "dest" / user.name
    planted = plant_future_copy(user, directory, only)
    for name in (only, f"{only}.sha256"):
        os.unlink(directory / name)
    target = Path(user.home) / "out.sqlite"
    result = t3backupd(config, "restore", "--user", user.name, "--to", str(target))
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if not line.startswith("{")]
    assert len(lines) == 1 and "not dated in the future" in lines[0] and planted in lines[0]
    assert not target.exists()
    # Named exactly it is still restorable, with the note that says what it is.
    named = t3backupd(
        config, "restore", "--user", user.name, "--snapshot", planted, "--to", str(target)
    )
    assert named.returncode == 0, named.stdout + named.stderr
    assert "is dated in the future" in named.stdout

"""`restore --from offsite --in-place` and `restore --at`, end to end: real users, real
WAL databases, a real restic repository, the real CLI and its setuid workers."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from support.offsite import Offsite, restic, restic_snapshots, tags_of
from support.snapshots import MakeUser, take_snapshot, temps_in
from support.system import PYTHON, create_state_db, run_as, snapshot_files, spawn_as, t3backupd

from t3backupd.core.naming import parse_name
from t3backupd.core.usermap import User

pytestmark = [pytest.mark.root]

DIGEST_SCRIPT = (
    "import sys; from t3backupd_dev.sampledb import content_digest;"
    " print(content_digest(sys.argv[1]))"
)
HOLDER_SCRIPT = (
    "import os, sqlite3, sys, time; c = sqlite3.connect(sys.argv[1]);"
    " c.execute('SELECT count(*) FROM sqlite_schema').fetchone();"
    " open(sys.argv[2], 'w').close()\n"
    "while not os.path.exists(sys.argv[3]): time.sleep(0.02)"
)


def said(stderr: str) -> list[str]:
    """What the CLI said on stderr (its log events, JSON lines here, left out)."""
    return [line for line in stderr.splitlines() if line and not line.startswith("{")]


def digest_as(user: User, path: Path) -> str:
    return run_as(user, [PYTHON, "-I", "-c", DIGEST_SCRIPT, str(path)]).stdout.strip()


def change_database(user: User, database: Path) -> None:
    run_as(user, [PYTHON, "-I", "-m", "t3backupd_dev.sampledb", "write", str(database),
                  "--duration", "0.3", "--rate", "200"])  # fmt: skip


def setup_offsite(offsite: Offsite, user: User) -> Path:
    config = offsite.write([user])
    assert t3backupd(config, "offsite", "init").returncode == 0
    return config


def sync(config: Path) -> None:
    synced = t3backupd(config, "offsite", "sync")
    assert synced.returncode == 0, synced.stdout + synced.stderr


def test_in_place_from_offsite_is_the_local_in_place(offsite: Offsite, make_user: MakeUser) -> None:
    user = make_user()
    database = create_state_db(user, size_mb=2, seed=21)
    os.chmod(database, 0o640)  # not the default: "kept" must mean kept
    config = setup_offsite(offsite, user)
    name = take_snapshot(config, user)
    user_dir = offsite.dest / user.name
    wanted = digest_as(user, user_dir / name)
    sync(config)
    # The local copies are gone (a lost disk): the bytes can only come from offsite.
    shutil.rmtree(offsite.dest)
    change_database(user, database)
    changed = digest_as(user, database)
    assert changed != wanted
    before = os.stat(database)

    # Refused while a process of the user holds the database; nothing changes.
    home = Path(user.home)
    ready, stop = home / "ready", home / "stop"
    holder = spawn_as(
        user, [PYTHON, "-I", "-c", HOLDER_SCRIPT, str(database), str(ready), str(stop)]
    )
    try:
        deadline = time.monotonic() + 20
        while not ready.exists():
            assert holder.poll() is None and time.monotonic() < deadline, "holder did not start"
            time.sleep(0.02)
        refused = t3backupd(
            config, "restore", "--user", user.name, "--from", "offsite", "--in-place"
        )
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert "in_use" in refused.stderr and f"pid {holder.pid} (" in refused.stderr
        assert len(said(refused.stderr)) == 1, refused.stderr
        assert digest_as(user, database) == changed
        assert not user_dir.exists() or snapshot_files(user_dir) == []
    finally:
        stop.touch()
        holder.wait(timeout=30)

    result = t3backupd(config, "restore", "--user", user.name, "--from", "offsite", "--in-place")
    assert result.returncode == 0, result.stdout + result.stderr
    assert name in result.stdout
    assert f"restore --user {user.name} --snapshot pre-restore --in-place" in result.stdout
    assert digest_as(user, database) == wanted
    after = os.stat(database)
    assert (after.st_ino, after.st_uid, after.st_gid) == (before.st_ino, user.uid, user.gid)
    assert stat.S_IMODE(after.st_mode) == 0o640
    # The pre-restore snapshot of the state it replaced is local, verified, and the
    # offsite copy's temp is gone.
    pre = [n for n in snapshot_files(user_dir) if n.endswith("--pre-restore.sqlite")]
    assert len(pre) == 1 and pre[0] in result.stdout, snapshot_files(user_dir)
    assert digest_as(user, user_dir / pre[0]) == changed
    assert snapshot_files(user_dir) == pre
    assert temps_in(user_dir) == []
    undo = t3backupd(
        config, "restore", "--user", user.name, "--snapshot", "pre-restore", "--in-place"
    )
    assert undo.returncode == 0, undo.stdout + undo.stderr
    assert digest_as(user, database) == changed


def test_a_tampered_offsite_copy_is_refused_and_the_live_db_untouched(
    offsite: Offsite, make_user: MakeUser
) -> None:
    user = make_user()
    database = create_state_db(user, size_mb=1, seed=22)
    config = setup_offsite(offsite, user)
    name = take_snapshot(config, user)
    original = (offsite.dest / user.name / name).read_bytes()
    sync(config)
    # Someone with the repository key swaps the bytes, keeping the recorded tags.
    (stored,) = restic_snapshots(offsite.backend, offsite.password)
    assert tags_of(stored)["name"] == name
    assert restic(offsite.backend, offsite.password, "forget", stored["id"]).returncode == 0
    tampered = bytearray(original)
    tampered[len(tampered) // 2] ^= 0xFF
    when = datetime.fromisoformat(stored["time"]).astimezone(UTC)
    command = ["backup", "--stdin", "--stdin-filename", f"{user.name}.sqlite",
               "--host", stored["hostname"],
               "--time", when.strftime("%Y-%m-%d %H:%M:%S")]  # fmt: skip
    for tag in stored["tags"]:
        command += ["--tag", tag]
    upload = subprocess.run(
        ["restic", "--repo", offsite.backend.repository, "--password-file", str(offsite.password),
         "--no-cache", *command],
        input=bytes(tampered), capture_output=True, timeout=120,
    )  # fmt: skip
    assert upload.returncode == 0, upload.stderr
    change_database(user, database)
    live = database.read_bytes()
    wal = database.with_name("state.sqlite-wal")
    live_wal = wal.read_bytes() if wal.exists() else b""

    result = t3backupd(config, "restore", "--user", user.name, "--from", "offsite", "--in-place")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "verify_failed" in result.stderr and "differs" in result.stderr, result.stderr
    assert database.read_bytes() == live
    assert (wal.read_bytes() if wal.exists() else b"") == live_wal
    user_dir = offsite.dest / user.name
    assert temps_in(user_dir) == []
    assert not [n for n in snapshot_files(user_dir) if "pre-restore" in n]


def test_at_picks_the_newest_copy_at_or_before_a_time(
    each_engine: Offsite, make_user: MakeUser
) -> None:
    offsite = each_engine  # the same selection over either engine's listing
    user = make_user()
    create_state_db(user, size_mb=1, seed=23)
    config = setup_offsite(offsite, user)
    with config.open("a") as handle:
        handle.write('[schedule]\ntimezone = "Europe/Berlin"\n')
    names = []
    for _ in range(3):
        names.append(take_snapshot(config, user))
        time.sleep(2.1)  # names have one-second resolution: keep a free second between
    sync(config)
    zone = ZoneInfo("Europe/Berlin")
    moments = []
    for name in names:
        parsed = parse_name(name)
        assert parsed is not None
        moments.append(parsed.time.astimezone(zone))

    def wall(moment: datetime, shift: float = 0) -> str:
        return datetime.fromtimestamp(moment.timestamp() + shift, zone).strftime(
            "%Y-%m-%d %H:%M:%S"
        )

    cases = [
        (wall(moments[0]), names[0]),  # at a copy
        (wall(moments[1], 1), names[1]),  # between two
        (wall(moments[2]), names[2]),
        (wall(moments[2], 3600), names[2]),  # after all of them
    ]
    for index, (at, expected) in enumerate(cases):
        for origin in ("offsite", "local"):
            target = Path(user.home) / f"at-{origin}-{index}.sqlite"
            result = t3backupd(config, "restore", "--user", user.name, "--from", origin,
                               "--at", at, "--to", str(target))  # fmt: skip
            assert result.returncode == 0, (at, origin, result.stdout + result.stderr)
            assert f"restored {expected}" in result.stdout, (at, origin, result.stdout)
            assert target.read_bytes() == (offsite.dest / user.name / expected).read_bytes()

    before = wall(moments[0], -1)
    for origin in ("offsite", "local"):
        never = str(Path(user.home) / "never.sqlite")
        early = t3backupd(config, "restore", "--user", user.name, "--from", origin,
                          "--at", before, "--to", never)  # fmt: skip
        assert early.returncode == 1, early.stdout + early.stderr
        (line,) = said(early.stderr)
        assert names[0] in line, line
        assert moments[0].strftime("%Y-%m-%d %H:%M:%S") in line, line
    assert not (Path(user.home) / "never.sqlite").exists()

    # In place, --at picks the same way (the one in-place path).
    database = Path(user.home) / ".t3" / "userdata" / "state.sqlite"
    change_database(user, database)
    in_place = t3backupd(config, "restore", "--user", user.name, "--from", "offsite",
                         "--at", wall(moments[1], 1), "--in-place")  # fmt: skip
    assert in_place.returncode == 0, in_place.stdout + in_place.stderr
    assert digest_as(user, database) == digest_as(user, offsite.dest / user.name / names[1])

    # A local time that does not exist (DST starts) and --at with --snapshot: one line, 2.
    gap_target = str(Path(user.home) / "gap.sqlite")
    gap = t3backupd(config, "restore", "--user", user.name, "--from", "offsite",
                    "--at", "2026-03-29 02:30", "--to", gap_target)  # fmt: skip
    assert gap.returncode == 2, gap.stdout + gap.stderr
    assert len(said(gap.stderr)) == 1
    assert "does not exist in Europe/Berlin" in gap.stderr, gap.stderr
    both = t3backupd(config, "restore", "--user", user.name, "--at", "2026-12-01",
                     "--snapshot", "latest", "--to", "/tmp/x")  # fmt: skip
    assert both.returncode == 2 and len(said(both.stderr)) == 1, both.stderr
    assert "--at" in both.stderr and "--snapshot" in both.stderr

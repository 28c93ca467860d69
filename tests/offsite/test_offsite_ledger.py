"""Root uploads only what root published (issue 20, item 3), against a hostile local user:
real users, real WAL databases, real restic and borg repositories, the real CLI and its
setuid workers. Labelled files the user plants in `<dest>/<user>` (with a matching
`NAME.sha256`) are never uploaded; a snapshot whose bytes and checksum file the user
rewrote after publish is refused as corrupt; each user's copies are bounded."""

from __future__ import annotations

import json
import signal
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from support.daemon import Site, daemon, sample, scrape, snapshot_times
from support.offsite import Backend, Offsite, make_offsite, offsite_section, password_file
from support.snapshots import MakeUser, take_snapshot
from support.system import PYTHON, create_state_db, run_as, t3backupd

from t3backupd.core.naming import format_name
from t3backupd.core.usermap import User

pytestmark = [pytest.mark.root, pytest.mark.slow]

# As the user: copy a snapshot's bytes under a new name, with its checksum file.
PLANT = r"""
import hashlib, sys
source, target = sys.argv[1], sys.argv[2]
data = open(source, "rb").read() + bytes(int(sys.argv[3]))
open(target, "wb").write(data)
name = target.rsplit("/", 1)[1]
open(target + ".sha256", "w").write(hashlib.sha256(data).hexdigest() + "  " + name + "\n")
"""


def offsite_names(config: Path) -> list[str]:
    listed = t3backupd(config, "list", "--offsite", "--json")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    (user,) = json.loads(listed.stdout)["users"]
    return sorted(copy["name"] for copy in user["snapshots"])


def plant(user: User, source: Path, target: Path, padding: int = 0) -> None:
    done = run_as(user, [PYTHON, "-I", "-c", PLANT, str(source), str(target), str(padding)])
    assert done.returncode == 0, done.stderr


def setup(site: Offsite, user: User, **keys: object) -> Path:
    create_state_db(user, size_mb=1, seed=61)
    config = site.write([user], **keys)
    initialised = t3backupd(config, "offsite", "init")
    assert initialised.returncode == 0, initialised.stdout + initialised.stderr
    return config


def test_planted_labelled_files_never_go_offsite(each_engine: Offsite, make_user: MakeUser) -> None:
    user = make_user()
    config = setup(each_engine, user)
    published = take_snapshot(config, user)
    local = each_engine.dest / user.name
    for round_ in range(3):  # plant, sync, delete locally, again: the attack
        planted = [
            format_name(datetime(2026, 1, 1 + round_, hour, tzinfo=UTC), f"keep{round_}x{hour}")
            for hour in (1, 2)
        ]
        for name in planted:
            plant(user, local / published, local / name)
        synced = t3backupd(config, "offsite", "sync")
        assert synced.returncode == 0, synced.stdout + synced.stderr
        # Only the snapshot root published goes offsite; nothing the user planted does.
        assert offsite_names(config) == [published], f"round {round_}"
        assert "offsite not uploaded" in synced.stderr, synced.stderr
        for name in planted:
            run_as(user, ["rm", "-f", str(local / name), str(local / f"{name}.sha256")])


def test_rewritten_bytes_and_checksum_after_publish_are_corrupt(
    each_engine: Offsite, make_user: MakeUser
) -> None:
    user = make_user()
    config = setup(each_engine, user)
    published = take_snapshot(config, user)
    local = each_engine.dest / user.name
    # The user replaces the published bytes (valid SQLite, 4096 bytes longer) and writes
    # the matching NAME.sha256: consistent on disk, but not what root published.
    original = local / published
    plant(user, original, local / "copy.sqlite")
    plant(user, local / "copy.sqlite", original, padding=4096)
    synced = t3backupd(config, "offsite", "sync")
    assert synced.returncode == 1, synced.stdout + synced.stderr
    assert f"{user.name}: FAILED corrupt: {published}" in synced.stdout, synced.stdout
    assert "root published" in synced.stdout
    assert offsite_names(config) == []


def test_the_per_user_bound_stops_uploads_with_one_clear_line(
    each_engine: Offsite, make_user: MakeUser
) -> None:
    user = make_user()
    config = setup(each_engine, user, max_copies_per_user=2)
    labelled = [take_snapshot(config, user, label=f"before-upgrade-{n}") for n in range(3)]
    synced = t3backupd(config, "offsite", "sync")
    assert synced.returncode == 1, synced.stdout + synced.stderr
    (line,) = [line for line in synced.stdout.splitlines() if line.startswith(user.name)]
    assert "FAILED quota:" in line and "offsite.max_copies_per_user = 2" in line, line
    assert labelled[0] in line  # the oldest waits: newest first
    assert offsite_names(config) == sorted(labelled[1:])
    logged = [json.loads(x) for x in synced.stderr.splitlines() if x.startswith("{")]
    assert [e["reason"] for e in logged if e.get("event") == "offsite upload"
            and e["level"] == "error"] == ["quota"]  # fmt: skip


def test_the_pre_restore_snapshot_root_published_goes_offsite(
    local_backend: Backend, sandbox: Path, make_user: MakeUser
) -> None:
    user = make_user()
    config = setup(make_offsite(sandbox, local_backend), user)
    published = take_snapshot(config, user)
    restored = t3backupd(config, "restore", "--user", user.name, "--in-place")
    assert restored.returncode == 0, restored.stdout + restored.stderr
    (pre,) = [word for word in restored.stdout.split() if "--pre-restore" in word]
    synced = t3backupd(config, "offsite", "sync")
    assert synced.returncode == 0, synced.stdout + synced.stderr
    assert offsite_names(config) == sorted([published, pre])


def test_the_daemon_uploads_only_what_it_published_and_reports_the_bound(
    site: Site, local_backend: Backend
) -> None:
    user = site.add_user()
    extra = offsite_section(local_backend, password_file(site.root), site.root / "cache",
                            None, max_copies_per_user=2)  # fmt: skip
    config = site.write([user], extra=extra)
    assert t3backupd(config, "offsite", "init").returncode == 0
    local = site.dest / user.name
    with daemon(site) as running:
        names = []
        for number in (1, 2, 3):
            running.signal(signal.SIGUSR1)
            event = running.wait_offsite(user.name, number)
            names.append(snapshot_times(site, user)[-1][0])
            if number == 1:  # planted between passes, with a matching checksum file
                plant(
                    user,
                    local / names[0],
                    local / format_name(datetime(2026, 1, 1, tzinfo=UTC), "x"),
                )
            time.sleep(1.1)  # names have one-second resolution
        outcomes = running.events("offsite", user=user.name)
        assert [e["status"] for e in outcomes] == ["ok", "ok", "failed"], outcomes
        assert event["reason"] == "quota", event
        assert "offsite.max_copies_per_user = 2" in str(event["message"]), event
        text = scrape(site.port)
        assert sample(text, "t3backup_offsite_quota_reached", user=user.name) == 1
        assert sample(text, "t3backup_offsite_failures_total", user=user.name, reason="quota") == 1
    assert offsite_names(config) == sorted(names[:2])

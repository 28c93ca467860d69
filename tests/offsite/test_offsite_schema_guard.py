"""The schema guard goes offsite with its label and its schema version, under root's
seal, and `restore --before-schema --from offsite` brings its bytes back: real users, a
T3-shaped database with its live writer, real restic and borg repositories."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from support.offsite import Offsite, offsite_section
from support.schema import migrate_forward, recorded_digest, schema_of
from support.snapshots import MakeUser, json_config, sha256_of, take_snapshot
from support.system import create_state_db, live_writer, t3backupd

pytestmark = [pytest.mark.root]

PASSES_AFTER = 20


def test_the_guard_is_kept_offsite_and_restored_from_there(
    each_engine: Offsite, make_user: MakeUser
) -> None:
    site = each_engine
    user = make_user()
    database = create_state_db(user, size_mb=2, seed=24)
    extra = "[retention]\nkeep = 3\n" + offsite_section(
        site.backend, site.password, site.sandbox / "cache", site.backend.env_file(site.sandbox)
    )
    config = json_config(site.sandbox / "etc", [user], extra=extra)
    assert t3backupd(config, "offsite", "init").returncode == 0
    directory = site.dest / user.name
    old = schema_of(database)
    with live_writer(user, database, rate=100) as writer:
        before = take_snapshot(config, user)
        digest = recorded_digest(directory / f"{before}.sha256")
        migrate_forward(user, database, old + 1)
        take_snapshot(config, user)
        for index in range(PASSES_AFTER):
            take_snapshot(config, user)
            if index % 10 == 0:
                synced = t3backupd(config, "offsite", "sync")
                assert synced.returncode == 0, synced.stdout + synced.stderr
    assert writer.stats["errors"] == 0, writer.stats["error_messages"]
    synced = t3backupd(config, "offsite", "sync")
    assert synced.returncode == 0, synced.stdout + synced.stderr
    guard = before.replace(".sqlite", f"--schema-{old}.sqlite")
    listed = t3backupd(config, "list", "--offsite", "--user", user.name)
    assert listed.returncode == 0 and guard in listed.stdout, listed.stdout + listed.stderr

    shutil.rmtree(site.dest)  # a lost disk: the bytes can only come from offsite
    target = Path(user.home) / "before-migration.sqlite"
    restored = t3backupd(
        config, "restore", "--user", user.name, "--before-schema", str(old + 1),
        "--from", "offsite", "--to", str(target),
    )  # fmt: skip
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert guard in restored.stdout
    assert sha256_of(target) == digest
    assert schema_of(target) == old

"""The per-user offsite job is one job (issue 19 item 3): `t3backupd offsite sync` and the
daemon's offsite lane (`OffsiteService`) run the same listing, upload and retention per
user, so a user whose local listing fails reads alike from both (a `worker` failure
naming the refused directory), and the other user's copy goes offsite either way.

Real users, real workers, each engine's real repository; the lane runs in this process
(the daemon's own class, with its own threads), the CLI as a subprocess."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from support.offsite import Offsite
from support.snapshots import MakeUser, take_snapshot
from support.system import create_state_db, t3backupd

from t3backupd.core.config import load_config
from t3backupd.root.offsite.service import OffsiteService
from t3backupd.root.spawn import ProcessTracker

pytestmark = [pytest.mark.root]
LANE_SECONDS = 300  # a deadline for the lane to go idle, never a speed assertion
NOBODY = 65534


def failures(text: str, user: str, reason: str) -> float:
    """`t3backup_offsite_failures_total{reason,user}` from a scrape (0 when absent)."""
    for line in text.splitlines():
        labels = f'user="{user}"' in line and f'reason="{reason}"' in line
        if line.startswith("t3backup_offsite_failures") and labels:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_refused_listing_reads_alike_from_offsite_sync_and_the_daemons_lane(
    each_engine: Offsite, make_user: MakeUser
) -> None:
    users = [make_user(), make_user()]
    config_path = each_engine.write(users)
    made = t3backupd(config_path, "offsite", "init")
    assert made.returncode == 0, made.stdout + made.stderr
    for seed, user in enumerate(users, start=191):
        create_state_db(user, size_mb=1, seed=seed)
        take_snapshot(config_path, user)
    alice, bob = users
    config = load_config(config_path)
    # Bob's directory now belongs to another uid (a user re-created with a new uid
    # looks like this): root hands it to no worker, so bob's listing fails.
    os.chown(Path(config.dest) / bob.name, NOBODY, NOBODY)

    synced = t3backupd(config_path, "offsite", "sync")
    assert synced.returncode == 1, synced.stdout + synced.stderr
    assert f"{alice.name}: ok 1 uploaded" in synced.stdout, synced.stdout
    said = synced.stdout + synced.stderr
    refused = f"{bob.name}: FAILED worker: cannot list local snapshots: "
    assert refused in said and f"owned by uid {NOBODY}" in said, said

    take_snapshot(config_path, alice)  # something new for the lane to upload
    tracker, registry = ProcessTracker(), CollectorRegistry()
    service = OffsiteService(lambda: config, lambda: users, tracker, registry)
    service.start()
    try:
        service.submit(alice)
        service.submit(bob)
        assert service.idle.wait(LANE_SECONDS), "the lane did not go idle"
    finally:
        tracker.terminate_all()
    scraped = generate_latest(registry).decode()
    assert failures(scraped, bob.name, "worker") == 1.0, scraped
    assert failures(scraped, alice.name, "worker") == 0.0, scraped
    assert f't3backup_offsite_snapshots{{user="{alice.name}"}} 2.0' in scraped, scraped

"""A hostile user against the offsite lane: the secrets stay out of reach (files and
every process they can see), and what they do to their own snapshots affects only their
own offsite copies -- other users' uploads finish."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from support.offsite import Offsite, stored_records
from support.snapshots import MakeUser, take_snapshot
from support.system import PYTHON, create_state_db, run_as, t3backupd

pytestmark = [pytest.mark.root, pytest.mark.slow]

# Run as the hostile user while an upload is under way: try the secret files, then
# every /proc/<pid>/environ and cmdline the kernel lets them read.
SNOOP = r"""
import json, os, sys, time
secrets_ = [line.encode() for line in sys.stdin.read().split()]  # not argv: visible
found = {"files": [], "leaks": [], "restic_cmdlines": 0, "worker_cmdlines": 0}
for path in sys.argv[1:3]:
    try:
        open(path, "rb").read()
        found["files"].append(path)
    except OSError:
        pass
deadline = time.monotonic() + 20
while time.monotonic() < deadline and not found["restic_cmdlines"]:
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        for name in ("environ", "cmdline"):
            try:
                data = open(f"/proc/{pid}/{name}", "rb").read()
            except OSError:
                continue
            if name == "cmdline" and b"restic" in data and b"backup" in data:
                found["restic_cmdlines"] += 1
            if name == "cmdline" and b"t3backupd.worker" in data:
                found["worker_cmdlines"] += 1
            for secret in secrets_:
                if secret in data:
                    found["leaks"].append(f"{pid}/{name}")
    time.sleep(0.05)
print(json.dumps(found))
"""


def test_user_cannot_read_the_password_or_credentials_anywhere(
    sandbox: Path, make_user: MakeUser
) -> None:
    from support.offsite import BACKENDS, make_offsite, need_restic

    need_restic()
    with BACKENDS["s3"](sandbox) as backend:
        site = make_offsite(sandbox, backend)
        user = make_user()
        create_state_db(user, size_mb=10, seed=40)
        site.write([user], limit_upload_kib=1024)
        env_file = next(sandbox.glob("offsite-*.env"))
        assert t3backupd(site.config, "offsite", "init").returncode == 0
        take_snapshot(site.config, user)
        password = site.password.read_text().strip()
        secret_key = backend.environment["AWS_SECRET_ACCESS_KEY"]
        outcome: list[object] = []
        syncing = threading.Thread(
            target=lambda: outcome.append(t3backupd(site.config, "offsite", "sync"))
        )
        syncing.start()
        snooped = run_as(
            user,
            [PYTHON, "-I", "-c", SNOOP, str(site.password), str(env_file)],
            input=f"{password}\n{secret_key}\n",
        )
        syncing.join(120)
        found = json.loads(snooped.stdout)
        assert found["files"] == []
        assert found["restic_cmdlines"] >= 1  # restic was running and visible...
        assert found["leaks"] == []  # ...and no secret was in anything the user could read


def test_tampered_snapshot_is_not_kept_and_other_users_finish(
    each_engine: Offsite, make_user: MakeUser
) -> None:
    offsite = each_engine
    mallory, bob = make_user(), make_user()
    create_state_db(mallory, size_mb=2, seed=41)
    create_state_db(bob, size_mb=2, seed=42)
    offsite.write([mallory, bob])
    assert t3backupd(offsite.config, "offsite", "init").returncode == 0
    result = t3backupd(offsite.config, "snapshot")
    assert result.returncode == 0, result.stderr
    (name,) = [p.name for p in (offsite.dest / mallory.name).glob("state-*.sqlite")]
    # Mallory rewrites bytes of her own published snapshot (not its .sha256).
    script = "import sys; f = open(sys.argv[1], 'r+b'); f.seek(8192); f.write(b'X' * 64); f.close()"
    run_as(mallory, [PYTHON, "-I", "-c", script, str(offsite.dest / mallory.name / name)])
    synced = t3backupd(offsite.config, "offsite", "sync")
    assert synced.returncode == 1
    assert f"{mallory.name}: FAILED corrupt: {name}: streamed" in synced.stdout, synced.stdout
    assert "sha256 differs; not kept" in synced.stdout
    assert f"{bob.name}: ok 1 uploaded" in synced.stdout
    users = [user for user, _, _ in stored_records(offsite)]
    assert users == [bob.name]
    time.sleep(0.1)

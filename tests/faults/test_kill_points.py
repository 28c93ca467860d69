"""A snapshot worker SIGKILLed at named points of its job (the test-only `JobSpec.fault`
boundary): after the copy, during verification, after publishing but before pruning.

The worker is run directly, as the user, the way the parent runs it; then the real CLI
takes the next pass. Promise under test: never a partial file under a published name,
and the next pass heals (temp removed, fresh verified snapshot, retention applied).
Needs root (real users, setuid).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.snapshots import assert_verified, json_config, temps_in, user_source
from support.system import PYTHON, run_as, t3backupd

from t3backupd.core.config import load_config
from t3backupd.core.jobs import snapshot_spec
from t3backupd.core.usermap import User
from t3backupd.root.spawn import prepare_user_dir

# As the user: integrity_check and the event count of a snapshot, opened read-only.
INSPECT = r"""
import sqlite3, sys
connection = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro&immutable=1", uri=True)
checks = [row[0] for row in connection.execute("PRAGMA integrity_check")]
events = connection.execute("SELECT count(*) FROM orchestration_events").fetchone()[0]
print(",".join(checks), events)
"""


@dataclass
class Source:
    user: User
    database: Path
    events: int
    sandbox: Path


@pytest.fixture(scope="module")
def source() -> Iterator[Source]:
    """One user with a small database, made once; no test writes to it."""
    with user_source(size_mb=3, seed=5) as made:
        _, events = inspect(made.user, made.database)
        yield Source(made.user, made.database, events, made.sandbox)


def inspect(user: User, path: Path) -> tuple[str, int]:
    """(integrity_check result, orchestration_events rows) of `path`, read as `user`."""
    result = run_as(user, [PYTHON, "-I", "-c", INSPECT, str(path)])
    checks, events = result.stdout.split()
    return checks, int(events)


def config_in(directory: Path, user: User, method: str, keep: int) -> Path:
    directory.mkdir(mode=0o755)
    extra = f'[snapshot]\nmethod = "{method}"\nverify = "full"\n[retention]\nkeep = {keep}\n'
    return json_config(directory, [user], extra)


def run_worker_with_fault(
    config: Path, user: User, fault: str
) -> subprocess.CompletedProcess[bytes]:
    """The parent's part done by hand: `<dest>/<user>` made as root, then the worker run
    as the user with the same spec the parent would send, plus `fault`."""
    loaded = load_config(config, environ={})
    prepare_user_dir(loaded.dest, user)
    spec = dataclasses.replace(snapshot_spec(loaded, user), fault=fault)
    return subprocess.run(
        [PYTHON, "-I", "-m", "t3backupd.worker"],
        input=spec.to_json(),
        capture_output=True,
        user=user.uid,
        group=user.gid,
        extra_groups=[],
        umask=0o077,
        cwd="/",
        env={"HOME": user.home, "USER": user.name, "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
        timeout=120,
    )


def assert_all_published_complete(source: Source, user_dir: Path) -> list[str]:
    """Every `state-*.sqlite` passes `sha256sum -c` and integrity_check and holds every
    event of the (unchanging) source. Returns the names."""
    names = assert_verified(source.user, user_dir)
    for name in names:
        assert inspect(source.user, user_dir / name) == ("ok", source.events), name
    return names


def assert_killed(result: subprocess.CompletedProcess[bytes]) -> None:
    assert result.returncode == -signal.SIGKILL, (result.returncode, result.stderr)
    assert result.stdout == b"", "a killed worker writes no report"


@pytest.mark.root
@pytest.mark.parametrize(
    ("fault", "method"),
    [("after_copy", "backup"), ("after_copy", "vacuum"), ("during_verify", "backup")],
)
def test_worker_killed_before_publish_leaves_only_a_hidden_temp_and_next_pass_heals(
    source: Source, fault: str, method: str
) -> None:
    config = config_in(source.sandbox / f"{fault}-{method}", source.user, method, keep=14)
    user_dir = config.parent / "dest" / source.user.name
    earlier = t3backupd(config, "snapshot")
    assert earlier.returncode == 0, earlier.stdout + earlier.stderr
    before = assert_all_published_complete(source, user_dir)
    assert len(before) == 1

    assert_killed(run_worker_with_fault(config, source.user, fault))

    # The kill came after the copy was written: it sits, whole or not, under a hidden
    # temp name only; the published set is exactly what it was.
    [temp] = [name for name in temps_in(user_dir) if name.endswith(".tmp")]
    assert (user_dir / temp).stat().st_size > 0
    assert assert_all_published_complete(source, user_dir) == before

    after = t3backupd(config, "snapshot")
    assert after.returncode == 0, after.stdout + after.stderr
    assert temps_in(user_dir) == []
    names = assert_all_published_complete(source, user_dir)
    [new] = sorted(set(names) - set(before))
    assert after.stdout.startswith(f"{source.user.name}: ok {new} ")


@pytest.mark.root
def test_worker_killed_after_publish_leaves_a_complete_snapshot_and_next_pass_prunes(
    source: Source,
) -> None:
    config = config_in(source.sandbox / "after_publish", source.user, "backup", keep=1)
    user_dir = config.parent / "dest" / source.user.name
    earlier = t3backupd(config, "snapshot")
    assert earlier.returncode == 0, earlier.stdout + earlier.stderr
    [first] = assert_all_published_complete(source, user_dir)

    assert_killed(run_worker_with_fault(config, source.user, "after_publish"))

    # Published (with its checksum) and complete, but the kill beat the prune: with
    # keep = 1 both snapshots are still there.
    names = assert_all_published_complete(source, user_dir)
    assert len(names) == 2 and first in names, names
    [killed] = [name for name in names if name != first]
    assert temps_in(user_dir) == []

    after = t3backupd(config, "snapshot")
    assert after.returncode == 0, after.stdout + after.stderr
    [newest] = assert_all_published_complete(source, user_dir)
    assert newest not in (first, killed)
    assert after.stdout.startswith(f"{source.user.name}: ok {newest} ")
    assert sorted(os.listdir(user_dir)) == sorted([".lock", newest, newest + ".sha256"])

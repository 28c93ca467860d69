"""Offsite fairness under a hostile user (issue 20, items 1 and 2): a user who freezes
their own stream workers mid-upload (as they can: a worker is dumpable again after setuid
and exec) costs the lane one stall per pass, not one timeout per pending copy, and holds
no engine process or repository lock that another user's upload, forget or prune needs.

Real users, real workers, real restic and borg repositories; the freezing is done here
as root by pid, exactly what the user could do to their own worker. Nothing is timed
against a threshold: what is asserted is who ran and in which order (how many stream
workers the attacker got, whether another user's retention and a prune finished while
the attacker's worker was still frozen). The delays are printed (`pytest -s`) for the
report: another user's sync, with the attacker and without.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
from support.offsite import Offsite, engine_pids
from support.snapshots import MakeUser, take_snapshot
from support.system import create_state_db, t3backupd

from t3backupd.core.config import load_config
from t3backupd.core.usermap import User
from t3backupd.root.offsite import make_engine
from t3backupd.root.offsite.lane import UserOffsite, run_offsite_pass
from t3backupd.root.spawn import ProcessTracker

pytestmark = [pytest.mark.root, pytest.mark.slow]

# Frozen once this much of the snapshot was read: the root side has had well over a MiB
# by then (the worker reads 1 MiB, then blocks on the pipe until it is taken), so an
# engine fed straight from the stream would be running.
FROZEN_PAST = 3 << 20
ATTACKER_MB = 24


def _state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return None


def _snapshot_fd(pid: int, directory: Path) -> int | None:
    """The descriptor on which `pid` reads a snapshot of `directory`, if any."""
    try:
        entries = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return None
    for entry in entries:
        with suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{entry}")
            if target.startswith(f"{directory}/state-") and target.endswith(".sqlite"):
                return int(entry)
    return None


def _position(pid: int, fd: int) -> int | None:
    try:
        text = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
    except OSError:
        return None
    return int(text.split("pos:", 1)[1].split()[0])


def _stop(pid: int) -> bool:
    """SIGSTOP `pid` and wait until it is stopped (False: it is gone)."""
    try:
        os.kill(pid, signal.SIGSTOP)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + 10
    while (state := _state(pid)) not in (None, "T", "t"):
        assert time.monotonic() < deadline, f"{pid} not stopped"
        time.sleep(0.001)
    return state is not None


def _continue(pid: int) -> None:
    with suppress(ProcessLookupError):
        os.kill(pid, signal.SIGCONT)


class StreamFreezer:
    """Every stream worker of `user` is SIGSTOPped once it has read `FROZEN_PAST` bytes of
    its snapshot (stepped there with SIGSTOP/SIGCONT, so it never runs past unseen), and
    left frozen: `frozen` lists them."""

    def __init__(self, user: User, directory: Path) -> None:
        self.user = user
        self.directory = directory
        self.frozen: list[int] = []
        self.escaped: list[int] = []
        self._seen: set[int] = set()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _workers(self) -> list[int]:
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) not in self._seen:
                with suppress(OSError):
                    ours = os.stat(f"/proc/{entry}").st_uid == self.user.uid
                    if ours and b"t3backupd.worker" in Path(f"/proc/{entry}/cmdline").read_bytes():
                        found.append(int(entry))
        return found

    def _watch(self) -> None:
        while not self._done.is_set():
            for pid in self._workers():
                fd = _snapshot_fd(pid, self.directory)
                if fd is not None:
                    self._seen.add(pid)
                    self._freeze(pid, fd)
            time.sleep(0.002)

    def _freeze(self, pid: int, fd: int) -> None:
        while _stop(pid):
            position = _position(pid, fd)
            if position is None:  # it closed the snapshot: not streaming (any more)
                self.escaped.append(pid)
                break
            if position >= FROZEN_PAST:
                self.frozen.append(pid)
                return
            _continue(pid)
            time.sleep(0.0005)
        _continue(pid)

    def still_frozen(self) -> bool:
        return bool(self.frozen) and all(_state(pid) in ("T", "t") for pid in self.frozen)

    def thaw(self) -> None:
        for pid in self.frozen:
            _continue(pid)

    @contextmanager
    def running(self) -> Iterator[StreamFreezer]:
        self._thread.start()
        try:
            yield self
        finally:
            self._done.set()
            self._thread.join(30)
            self.thaw()


def _site(offsite: Offsite, users: list[User], **keys: object) -> Path:
    config = offsite.write(users, **keys)
    made = t3backupd(config, "offsite", "init")
    assert made.returncode == 0, made.stdout + made.stderr
    return config


def _snapshots(config: Path, user: User, labels: list[str | None]) -> list[str]:
    names = []
    for label in labels:
        names.append(take_snapshot(config, user, label))
        time.sleep(1.05)  # names have whole seconds
    return names


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def _figure(offsite: Offsite, attacker: bool, text: str) -> None:
    """A measured delay, for the report (`pytest -s`); never asserted."""
    print(f"\n[{offsite.backend.engine}, attacker {'frozen' if attacker else 'absent'}] {text}")


def _synced(outcomes: list[UserOffsite], user: User, name: str) -> dict[str, UserOffsite]:
    """The pass's outcomes by user, `user`'s checked: ok, `name` uploaded."""
    by_user = {outcome.user.name: outcome for outcome in outcomes}
    assert [item.meta.name for item in by_user[user.name].uploaded] == [name]
    assert by_user[user.name].ok, by_user[user.name].failures
    return by_user


@pytest.mark.parametrize("attacker", [True, False], ids=["frozen", "calm"])
def test_a_frozen_stream_ends_its_users_turn_and_the_next_user_goes_offsite(
    each_engine: Offsite, make_user: MakeUser, attacker: bool
) -> None:
    """Mallory (served first, one lane) has three labelled copies pending and freezes
    each stream worker mid-upload: she gets one stream worker this pass (a stall ends
    her turn), Bob's copy goes offsite in the same pass."""
    mallory, bob = make_user(), make_user()
    create_state_db(mallory, size_mb=ATTACKER_MB, seed=61)
    create_state_db(bob, size_mb=2, seed=62)
    config_path = _site(
        each_engine, [mallory, bob],
        concurrency=1, timeout_seconds=12, stall_seconds=3, user_turn_seconds=600,
    )  # fmt: skip
    pending = _snapshots(config_path, mallory, ["a", "b", "c"])
    [bobs] = _snapshots(config_path, bob, [None])
    config = load_config(config_path)
    engine = make_engine(config, ProcessTracker())
    finished: dict[str, float] = {}
    freezer = StreamFreezer(mallory, each_engine.dest / mallory.name)
    started = time.monotonic()

    def arrived(outcome: UserOffsite) -> None:
        finished[outcome.user.name] = time.monotonic() - started

    with freezer.running() if attacker else _nothing():
        outcomes = run_offsite_pass(engine, config, [mallory, bob], on_result=arrived)
    _figure(each_engine, attacker, f"bob's sync done {finished[bob.name]:.1f}s after the pass "
            f"began (mallory's turn ended at {finished[mallory.name]:.1f}s)")  # fmt: skip
    by_user = _synced(outcomes, bob, bobs)
    if attacker:
        assert freezer.escaped == []
        assert len(freezer.frozen) == 1, "a stall must end mallory's turn: one stream worker"
        assert [error.reason for error in by_user[mallory.name].failures] == ["timeout"]
        assert by_user[mallory.name].uploaded == []
    else:
        uploaded = sorted(item.meta.name for item in by_user[mallory.name].uploaded)
        assert uploaded == sorted(pending)


@pytest.mark.parametrize("attacker", [True, False], ids=["frozen", "calm"])
def test_a_frozen_stream_holds_no_lock_another_users_retention_or_a_prune_needs(
    each_engine: Offsite, make_user: MakeUser, attacker: bool
) -> None:
    """Two lanes: Mallory's stream worker frozen mid-upload; Bob's upload and forget, and
    then a prune, finish while it is still frozen, with no engine process running for
    her. Thawed, her copy goes offsite too."""
    mallory, bob = make_user(), make_user()
    create_state_db(mallory, size_mb=ATTACKER_MB, seed=63)
    create_state_db(bob, size_mb=2, seed=64)
    config_path = _site(
        each_engine, [mallory, bob],
        concurrency=2, timeout_seconds=90, stall_seconds=90,
        keep_last=1, keep_daily=0, keep_weekly=0, keep_monthly=0,
    )  # fmt: skip
    config = load_config(config_path)
    engine = make_engine(config, ProcessTracker())
    [old] = _snapshots(config_path, bob, [None])
    [first] = run_offsite_pass(engine, config, [bob])
    assert [item.meta.name for item in first.uploaded] == [old], first.failures
    [new] = _snapshots(config_path, bob, [None])
    [hers] = _snapshots(config_path, mallory, [None])
    freezer = StreamFreezer(mallory, each_engine.dest / mallory.name)
    bob_done = threading.Event()
    seen: dict[str, object] = {}
    started = time.monotonic()

    def arrived(outcome: UserOffsite) -> None:
        if outcome.user.name == bob.name:
            seen["after"] = time.monotonic() - started
            seen["frozen"] = freezer.still_frozen()
            seen["engines"] = engine_pids(each_engine.backend.repository)
            bob_done.set()

    outcomes: list[UserOffsite] = []
    passing = threading.Thread(
        target=lambda: outcomes.extend(
            run_offsite_pass(engine, config, [mallory, bob], on_result=arrived)
        )
    )
    with freezer.running() if attacker else _nothing():
        passing.start()
        assert bob_done.wait(300), "bob's sync never finished"
        clock = time.monotonic()
        engine.prune()
        pruned_in = time.monotonic() - clock
        frozen_after_prune = freezer.still_frozen()
    passing.join(300)
    assert not passing.is_alive()
    _figure(each_engine, attacker, f"bob's upload + forget done {seen['after']:.1f}s after "
            f"the pass began; prune took {pruned_in:.1f}s")  # fmt: skip
    by_user = _synced(outcomes, bob, new)
    assert len(by_user[bob.name].forgotten) == 1 and by_user[bob.name].snapshots == 1
    if attacker:
        assert freezer.escaped == [] and len(freezer.frozen) == 1
        assert seen["frozen"], "bob's retention waited for mallory's frozen stream"
        assert seen["engines"] == [], "an engine ran while mallory's stream was frozen"
        assert frozen_after_prune, "the prune waited for mallory's frozen stream"
    assert [item.meta.name for item in by_user[mallory.name].uploaded] == [hers]

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

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from support.offsite import Offsite, engine_pids
from support.snapshots import MakeUser, take_snapshot
from support.streams import StreamFreezer
from support.system import create_state_db, t3backupd

from t3backupd.core.config import load_config
from t3backupd.core.usermap import User
from t3backupd.root.offsite import make_engine
from t3backupd.root.offsite.sync import UserOffsite, run_offsite_pass
from t3backupd.root.spawn import ProcessTracker

pytestmark = [pytest.mark.root, pytest.mark.slow]
ATTACKER_MB = 24


def _attacker_and_other(
    offsite: Offsite, make_user: MakeUser, seed: int, **keys: object
) -> tuple[User, User, Path]:
    """Mallory (a large database, served first) and Bob (a small one) on `offsite`,
    initialised, with these `[offsite]` keys: (mallory, bob, config)."""
    mallory, bob = make_user(), make_user()
    create_state_db(mallory, size_mb=ATTACKER_MB, seed=seed)
    create_state_db(bob, size_mb=2, seed=seed + 1)
    config = offsite.write([mallory, bob], **keys)
    made = t3backupd(config, "offsite", "init")
    assert made.returncode == 0, made.stdout + made.stderr
    return mallory, bob, config


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
    mallory, bob, config_path = _attacker_and_other(
        each_engine, make_user, 61,
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
    mallory, bob, config_path = _attacker_and_other(
        each_engine, make_user, 63,
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


def test_a_users_turn_ends_their_stream_however_patient_the_stall(
    each_engine: Offsite, make_user: MakeUser
) -> None:
    """A stream that trickles (here: frozen, with a stall longer than the turn) is ended
    by the user's turn, `user_turn_seconds`: their other copies wait for the next pass,
    and the next user goes offsite."""
    mallory, bob, config_path = _attacker_and_other(
        each_engine, make_user, 65,
        concurrency=1, timeout_seconds=600, stall_seconds=600, user_turn_seconds=5,
    )  # fmt: skip
    _snapshots(config_path, mallory, ["a", "b"])
    [bobs] = _snapshots(config_path, bob, [None])
    config = load_config(config_path)
    freezer = StreamFreezer(mallory, each_engine.dest / mallory.name)
    with freezer.running():
        outcomes = run_offsite_pass(make_engine(config, ProcessTracker()), config, [mallory, bob])
    by_user = _synced(outcomes, bob, bobs)
    assert len(freezer.frozen) == 1 and by_user[mallory.name].uploaded == []
    [failure] = by_user[mallory.name].failures
    assert failure.reason == "timeout" and "stream not finished after" in failure.message

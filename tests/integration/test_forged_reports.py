"""Issue 10: a forged but well-formed report, on every action, never crashes the root side.

A user controls their worker: by ptrace, or by writing into a stolen copy of its stdout
(see test_containment) and killing it, they can make it hand the parent any report the
protocol admits. Hypothesis draws such reports for each action; the parent's seam that
runs the worker (`runner.run_worker`) hands them over as a worker would (a report the
parser refuses becomes `worker_crashed`, as in spawn.run_worker), and every root-side
consumer runs for real: the CLI's snapshot, list, verify, restore --to and the in-place
restore path (its check report's `extra` included), the daemon's inventory into the
metrics and a scrape. Nothing may raise; exit codes stay in the documented set.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from support.snapshots import MakeUser, json_config

from t3backupd.core.checks import verify_failures
from t3backupd.core.naming import format_name, is_valid_label
from t3backupd.core.protocol import (
    FAILURE_REASONS,
    PROTOCOL_VERSION,
    RESTORE_FAILURE_REASONS,
    SKIP_REASONS,
    JobSpec,
    Report,
    ReportError,
    failed,
    parse_report,
)
from t3backupd.core.usermap import User
from t3backupd.root import cli, runner
from t3backupd.root.inventory import Inventory
from t3backupd.root.metrics import Metrics
from t3backupd.root.passes import run_inventory, run_pass, run_verify_pass
from t3backupd.root.served import load_served
from t3backupd.root.spawn import ProcessTracker

ACTIONS = ("snapshot", "inventory", "verify", "restore")
EXIT_CODES = {0, 1, 2, 3, 4}
USERS: list[User] = []

labels = st.one_of(
    st.none(), st.from_regex(r"[A-Za-z0-9._-]{1,12}", fullmatch=True).filter(is_valid_label)
)
times = st.datetimes(
    min_value=datetime(1971, 1, 1), max_value=datetime(5000, 1, 1), timezones=st.just(UTC)
)
names = st.builds(format_name, times, labels)
texts = st.text(max_size=60)
numbers = st.one_of(st.integers(0, 1 << 62), st.floats(0, 1e11, allow_nan=False))


@st.composite
def snapshot_docs(draw: st.DrawFn) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": draw(names),
        "time": draw(numbers),
        "bytes": draw(st.integers(0, 1 << 62)),
    }
    if draw(st.booleans()):
        doc["label"] = draw(labels)
    if draw(st.booleans()):
        doc["has_checksum"] = draw(st.booleans())
    return doc


@st.composite
def report_docs(draw: st.DrawFn, action: str) -> dict[str, Any]:
    status = draw(st.sampled_from(("ok", "failed", "skipped")))
    reasons = FAILURE_REASONS + (RESTORE_FAILURE_REASONS if action == "restore" else ())
    reason = {
        "ok": None,
        "failed": draw(st.sampled_from(reasons)),
        "skipped": draw(st.sampled_from(SKIP_REASONS)),
    }[status]
    doc: dict[str, Any] = {"protocol": PROTOCOL_VERSION, "action": action, "status": status}
    if reason is not None or draw(st.booleans()):
        doc["reason"] = reason
    optional = {
        "message": texts,
        "snapshot": st.one_of(st.none(), snapshot_docs()),
        "source_bytes": st.integers(0, 1 << 62),
        "dir_bytes": st.integers(0, 1 << 62),
        "duration_s": numbers,
        "snapshots": st.lists(snapshot_docs(), max_size=5),
        "pruned": st.lists(names, max_size=3),
        "verified": st.lists(
            st.fixed_dictionaries(
                {
                    "name": names,
                    "outcome": st.sampled_from(
                        [
                            "ok",
                            "checksum_mismatch",
                            "integrity_error",
                            "missing_checksum",
                            "unreadable",
                        ]
                    ),
                },
                optional={"detail": texts},
            ),
            max_size=4,
        ),
        "extra": st.dictionaries(
            st.sampled_from(["restored_from", "undo", "target", "pre_restore"]),
            st.one_of(names, texts),
            max_size=3,
        ),
    }
    for key, strategy in optional.items():
        if draw(st.booleans()):
            doc[key] = draw(strategy)
    return doc


forged_sets = st.fixed_dictionaries({action: report_docs(action) for action in ACTIONS})


def forged_worker(documents: dict[str, dict[str, Any]]) -> Any:
    """Stands in for spawn.run_worker: the user's forged line, parsed as the parent does."""

    def run(spec: JobSpec, user: User, timeout: float, tracker: object = None) -> Report:
        raw = (json.dumps(documents[spec.action]) + "\n").encode()
        try:
            return parse_report(raw, spec.action)
        except ReportError as error:
            return failed(spec.action, "worker_crashed", f"invalid report ({error})")

    return run


@pytest.mark.root
@settings(
    max_examples=60,
    phases=(Phase.explicit, Phase.reuse, Phase.generate),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(documents=forged_sets)
def test_forged_reports_on_every_action_never_crash_the_root_side(
    documents: dict[str, dict[str, Any]], sandbox: Path, make_user: MakeUser
) -> None:
    if not USERS:
        USERS.append(make_user())  # one real user for all examples (fixtures run once)
    user = USERS[0]
    config = json_config(sandbox, [user])
    (sandbox / "dest" / user.name).mkdir(parents=True, exist_ok=True)  # list runs a worker
    args = ["-c", str(config)]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runner, "run_worker", forged_worker(documents))
        for command in (
            ["snapshot"],
            ["list"],
            ["list", "--json"],
            ["verify"],
            ["verify", "--json"],
            ["restore", "--user", user.name, "--to", str(sandbox / "restored.sqlite")],
            ["restore", "--user", user.name, "--in-place"],
            ["restore", "--user", user.name, "--in-place", "--force"],
        ):
            assert cli.main(args + command) in EXIT_CODES, command
        # The daemon's consumers: inventory into the metrics, snapshot results, a scrape.
        served = load_served(config).config
        registry = CollectorRegistry()
        metrics = Metrics(registry)
        metrics.set_users([user.name])
        inventory = Inventory(metrics, ProcessTracker())
        for result in run_inventory(served, [user], concurrency=1):
            inventory.apply(result)
        for result in run_pass(served, [user]):
            metrics.record_result(result)
        for result in run_verify_pass(served, [user]):
            metrics.record_verify(user.name, verify_failures(result.report), result.started)
        assert generate_latest(registry).count(b"\n") > 10

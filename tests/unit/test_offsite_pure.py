"""The offsite parts that are pure decisions: the `[offsite]` section, the secret-file
rules (on real files), restic error classification and redaction, parsing what restic
lists, and the per-user retention / backfill choices."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from t3backupd.core.config import load_config, parse_config
from t3backupd.core.errors import ConfigError
from t3backupd.core.naming import format_name
from t3backupd.core.offsite_config import (
    OffsiteConfig,
    credential_problem,
    has_credential,
    parse_environment,
    parse_offsite,
    secret_file_problems,
)
from t3backupd.core.retention import RetentionPolicy
from t3backupd.core.usermap import User
from t3backupd.root.ledger import Entry
from t3backupd.root.offsite.download import choose_copy
from t3backupd.root.offsite.engine import OffsiteError, OffsiteSnapshot, SnapshotMeta
from t3backupd.root.offsite.metrics import OffsiteMetrics
from t3backupd.root.offsite.policy import expired_copies, quota_problem, to_upload
from t3backupd.root.offsite.restic import _parse_snapshot, classify, redact
from t3backupd.root.offsite.sync import UserOffsite
from t3backupd.root.served import require_offsite_secrets

DIGEST = "ab" * 32
NO_ENV: dict[str, str] = {}


def problems(offsite: dict[str, object]) -> tuple[str, ...]:
    with pytest.raises(ConfigError) as caught:
        parse_config({"offsite": offsite}, "/etc/t3backupd/config.toml", NO_ENV)
    return caught.value.problems


def test_no_offsite_section_means_off() -> None:
    assert parse_config({}, "c.toml", NO_ENV).offsite is None


def test_a_minimal_section_gets_the_documented_defaults() -> None:
    config = parse_config(
        {"offsite": {"repository": "s3:https://h/b", "password_file": "/etc/p"}}, "c", NO_ENV
    )
    expected = OffsiteConfig(repository="s3:https://h/b", password_file="/etc/p")  # noqa: S106
    assert config.offsite == expected
    assert (config.offsite.keep_last, config.offsite.keep_daily) == (3, 7)
    assert config.offsite.prune_cron == "15 5 * * 0"


def test_every_problem_of_the_section_is_reported_at_once() -> None:
    found = problems(
        {
            "repository": "ftp:nowhere",
            "password_file": "relative",
            "compression": "zstd",
            "concurrency": 0,
            "keep_last": -1,
            "prune_cron": "61 * * * *",
            "check_read_data_subset": "8/7",
            "options": ["not an option"],
            "timeout_seconds": "60",
            "bucket": "x",
        }
    )
    keys = sorted({problem.split(":")[0] for problem in found})
    assert keys == sorted(
        "offsite." + key
        for key in (
            "repository",
            "password_file",
            "compression",
            "concurrency",
            "keep_last",
            "prune_cron",
            "check_read_data_subset",
            "options",
            "timeout_seconds",
            "bucket",
        )
    )
    assert "offsite.bucket: unknown key" in found
    assert "offsite.timeout_seconds: expected int, got str" in found


@pytest.mark.parametrize("subset", ["1/7", "7/7", "5%", "2.5%", "500M", "10G"])
def test_read_data_subsets_restic_accepts(subset: str) -> None:
    parse_config(
        {"offsite": {"repository": "/r", "password_file": "/p", "check_read_data_subset": subset}},
        "c",
        NO_ENV,
    )


def _secret(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / f"secret-{mode:o}"
    path.write_text(text)
    os.chmod(path, mode)
    return path


def test_secret_files_must_be_private_regular_files_of_the_owner(tmp_path: Path) -> None:
    me = os.geteuid()
    good = _secret(tmp_path, "pw\n")
    assert secret_file_problems(OffsiteConfig("/r", str(good)), me) == []
    loose = _secret(tmp_path, "pw\n", 0o640)
    (problem,) = secret_file_problems(OffsiteConfig("/r", str(loose)), me)
    assert problem.startswith(f"offsite.password_file: {loose}: mode 0640")
    link = tmp_path / "link"
    link.symlink_to(good)
    (problem,) = secret_file_problems(OffsiteConfig("/r", str(link)), me)
    assert "symlink is refused" in problem
    (problem,) = secret_file_problems(OffsiteConfig("/r", str(good)), me + 1)
    assert f"must be owned by uid {me + 1}" in problem
    empty = tmp_path / "empty"
    empty.write_text("\n")
    os.chmod(empty, 0o600)
    assert "is empty" in secret_file_problems(OffsiteConfig("/r", str(empty)), me)[0]
    missing = OffsiteConfig("/r", str(tmp_path / "none"))
    assert secret_file_problems(missing, me)[0].endswith("does not exist")


def test_secrets_are_checked_where_used_not_by_load_config(tmp_path: Path) -> None:
    # Issue 21 item 1: load_config (every command, a user's `list` too) never opens the
    # secrets; what uses them (daemon, `offsite` commands) refuses a readable one.
    password = _secret(tmp_path, "pw\n", 0o644)
    config = tmp_path / "config.toml"
    config.write_text(f'[offsite]\nrepository = "/r"\npassword_file = "{password}"\n')
    loaded = load_config(config, environ=NO_ENV)
    with pytest.raises(ConfigError, match=r"offsite\.password_file: .* chmod 0600"):
        require_offsite_secrets(loaded)
    os.chmod(password, 0o600)
    require_offsite_secrets(loaded)


def test_repository_file_or_repository_and_credentials_in_urls() -> None:
    problems: list[str] = []
    config = parse_offsite({"repository_file": "/etc/r", "password_file": "/p"}, problems)
    assert problems == [] and config.repository == ""
    parse_offsite({"repository_file": "/etc/r", "repository": "/x", "password_file": "/p"},
                  problems)  # fmt: skip
    assert problems == ["offsite.repository: set repository or repository_file, not both"]
    problems.clear()
    parse_offsite({"engine": "borg", "repository": "/x", "repository_file": "/r",
                   "password_file": "/p"}, problems)  # fmt: skip
    assert problems == ["offsite.repository_file: means nothing for engine 'borg'; remove it"]
    secret = OffsiteConfig("rest:https://u:pw@host:8000/r", "/p")
    assert has_credential(secret.repository)
    assert not has_credential("sftp:u@host:/r") and not has_credential("rest:https://host/r")
    assert credential_problem(secret, 0o100600) is None
    line = credential_problem(secret, 0o100644)
    assert line is not None and line.startswith("offsite.repository: has a password")
    assert "0644" in line and "pw" not in line


def test_environment_file_lines_and_what_it_may_not_set() -> None:
    assert parse_environment("# c\n\nAWS_ACCESS_KEY_ID=a\nexport B='x y'\n") == {
        "AWS_ACCESS_KEY_ID": "a",
        "B": "x y",
    }
    with pytest.raises(ValueError, match="line 2: expected KEY=VALUE"):
        parse_environment("A=1\nnot a line\n")
    with pytest.raises(ValueError, match="line 1: RESTIC_PASSWORD is not allowed"):
        parse_environment("RESTIC_PASSWORD=x\n")


@pytest.mark.parametrize(
    ("stderr", "reason"),
    [
        ("Fatal: wrong password or no key found", "auth"),
        ("unable to create lock in backend: repository is already locked by PID 1", "locked"),
        ("Fatal: unable to save snapshot: write /r/data: no space left on device", "no_space"),
        (
            'Stat: Get "http://127.0.0.1:1/b/": dial tcp 127.0.0.1:1: connect: refused',
            "unreachable",
        ),
        (
            "Fatal: unable to open config file: stat /r/config: no such file or directory\n"
            "Is there a repository at the following location?",
            "no_repository",
        ),
        (
            "Fatal: unable to open config file: Stat: The Access Key Id does not exist "
            "(InvalidAccessKeyId)",
            "auth",
        ),
        ("Fatal: something else entirely", "failed"),
    ],
)
def test_restic_errors_are_classified(stderr: str, reason: str) -> None:
    assert classify(stderr) == reason


def test_a_password_in_a_repository_url_is_never_shown() -> None:
    assert (
        redact("rest:https://user:secret@host:8000/repo") == "rest:https://user:***@host:8000/repo"
    )
    assert redact("s3:https://host/bucket") == "s3:https://host/bucket"
    assert redact("/srv/repo") == "/srv/repo"


def _item(user: str, name: str, **changes: object) -> dict[str, object]:
    item: dict[str, object] = {
        "id": "f" * 64,
        "hostname": "h",
        "paths": [f"/{user}.sqlite"],
        "tags": ["t3backupd", f"user={user}", f"name={name}", f"sha256={DIGEST}", "size=10"],
    }
    item.update(changes)
    return item


def test_listed_snapshots_are_parsed_strictly() -> None:
    name = "state-20261201T033000Z--pre-upgrade.sqlite"
    parsed = _parse_snapshot(
        _item("alice", name, tags=[*_item("alice", name)["tags"], "label=pre-upgrade"])
    )  # type: ignore[list-item]
    assert parsed is not None
    assert (parsed.meta.user, parsed.meta.label, parsed.meta.size) == ("alice", "pre-upgrade", 10)
    # A label tag that disagrees with the name, a foreign path, a bad digest: not ours.
    assert _parse_snapshot(_item("alice", name)) is None
    assert (
        _parse_snapshot(_item("alice", "state-20261201T033000Z.sqlite", paths=["/bob.sqlite"]))
        is None
    )
    bad = _item("alice", "state-20261201T033000Z.sqlite")
    bad["tags"] = [t if not str(t).startswith("sha256=") else "sha256=xyz" for t in bad["tags"]]  # type: ignore[union-attr]
    assert _parse_snapshot(bad) is None
    assert _parse_snapshot(_item("alice", "../etc/passwd")) is None


def _copy(user: str, when: datetime, label: str | None = None, ident: str = "") -> OffsiteSnapshot:
    name = format_name(when, label)
    meta = SnapshotMeta(user, name, when.timestamp(), 10, DIGEST, label)
    return OffsiteSnapshot(ident or name, meta, "h")


def test_expired_copies_keep_the_newest_labelled_and_one_copy_per_name() -> None:
    start = datetime(2026, 12, 1, 3, 30, tzinfo=UTC)
    copies = [_copy("alice", start + timedelta(hours=i)) for i in range(5)]
    labelled = _copy("alice", start - timedelta(days=30), "pre-upgrade")
    twice = _copy("alice", start + timedelta(hours=4), ident="older-duplicate")
    expired = expired_copies([labelled, twice, *copies], RetentionPolicy(keep=2))
    assert sorted(expired) == sorted(["older-duplicate", copies[0].id, copies[1].id, copies[2].id])


def _entry(when: datetime, size: int = 10, label: str | None = None) -> Entry:
    return Entry(format_name(when, label), size, "a" * 64, when.timestamp(), label)


def test_to_upload_skips_what_is_offsite_or_would_be_forgotten_newest_first() -> None:
    start = datetime(2026, 12, 1, 3, 30, tzinfo=UTC)
    published = [_entry(start + timedelta(hours=i)) for i in range(4)]
    present = [_copy("alice", start + timedelta(hours=3))]
    chosen = to_upload(published, present, RetentionPolicy(keep=3))
    assert [entry.name for entry in chosen] == [published[2].name, published[1].name]


def test_quota_counts_copies_and_bytes_labelled_included() -> None:
    start = datetime(2026, 12, 1, 3, 30, tzinfo=UTC)
    bounded = OffsiteConfig(max_copies_per_user=3, max_bytes_per_user=100)
    entry = _entry(start, size=40)
    assert quota_problem(2, 60, entry, bounded) is None
    copies = quota_problem(3, 0, entry, bounded)
    assert copies is not None and "offsite.max_copies_per_user = 3" in copies
    size = quota_problem(0, 61, entry, bounded)
    assert size is not None and "offsite.max_bytes_per_user = 100" in size
    unbounded = OffsiteConfig(max_copies_per_user=0, max_bytes_per_user=0)
    assert quota_problem(10**6, 1 << 40, entry, unbounded) is None


def test_choose_copy_by_latest_label_and_name() -> None:
    start = datetime(2026, 12, 1, 3, 30, tzinfo=UTC)
    copies = [
        _copy("a", start),
        _copy("a", start + timedelta(hours=1), "pre-upgrade"),
        _copy("a", start + timedelta(hours=2)),
    ]
    assert choose_copy(copies, "latest") is copies[2]
    assert choose_copy(copies, "pre-upgrade") is copies[1]
    assert choose_copy(copies, copies[0].meta.name) is copies[0]


def test_the_documented_hourly_configuration_parses_and_keeps_two_weeks_offsite() -> None:
    # The TOML block under "## Hourly snapshots" in docs/operations.md, as an operator
    # would paste it (its elided [offsite] lines filled in).
    import tomllib

    from t3backupd.root.offsite.policy import offsite_policy
    from t3backupd.root.scheduler import longest_interval, trigger_for

    docs = Path(__file__).parents[2] / "docs" / "operations.md"
    section = docs.read_text().split("## Hourly snapshots", 1)[1]
    block = section.split("```toml\n", 1)[1].split("```", 1)[0]
    block = block.replace(
        "# ... repository, password_file as above ...",
        'repository = "/srv/t3-offsite"\npassword_file = "/etc/t3backupd/offsite.password"',
    )
    config = parse_config(tomllib.loads(block), "operations.md", NO_ENV)
    assert config.retention.keep == 2
    assert longest_interval(trigger_for(config.schedule), datetime.now(UTC)) == 3600
    # Two weeks of hourly copies of one user, newest now: what the policy keeps.
    now = datetime(2026, 12, 1, 14, 0, tzinfo=UTC)
    copies = [
        OffsiteSnapshot(
            id=f"id{hour}",
            meta=SnapshotMeta(
                user="alice",
                name=format_name(now - timedelta(hours=hour)),
                time=(now - timedelta(hours=hour)).timestamp(),
                size=1,
                sha256=DIGEST,
            ),
            host="h",
        )
        for hour in range(14 * 24)
    ]
    expired = set(expired_copies(copies, offsite_policy(config)))
    kept = [copy for copy in copies if copy.id not in expired]
    ages_h = sorted(round((now.timestamp() - copy.meta.time) / 3600) for copy in kept)
    # Every hour of the last 48 (back to 11-29 15:00), then 23:00 of each of the 11
    # earlier days 11-18 .. 11-28 (11-29 .. 12-01 are among the hourly ones); the ISO
    # weeks' newest copies are among those.
    assert ages_h[:48] == list(range(48))
    assert len(kept) == 48 + 11
    assert max(ages_h) == 12 * 24 + 15  # 11-18 23:00


def test_quota_reached_is_a_gauge_and_a_failure_reason() -> None:
    registry = CollectorRegistry()
    metrics = OffsiteMetrics(registry)
    alice = User("alice", 1000, 1000, "/home/alice")
    metrics.set_users(["alice"])
    refused = UserOffsite(alice, quota_reached=True)
    refused.failures.append(OffsiteError("quota", "state-x.sqlite: not uploaded"))
    metrics.record(refused)
    text = generate_latest(registry).decode()
    assert 't3backup_offsite_quota_reached{user="alice"} 1.0' in text
    assert 't3backup_offsite_failures_total{reason="quota",user="alice"} 1.0' in text
    metrics.record(UserOffsite(alice))  # the next sync got its uploads through
    text = generate_latest(registry).decode()
    assert 't3backup_offsite_quota_reached{user="alice"} 0.0' in text

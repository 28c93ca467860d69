"""What a reload says it changed (`daemon.describe_changes`, pure): users, schedule,
metrics, the other sections, and `[offsite]` by key name, never by value."""

from __future__ import annotations

from dataclasses import replace

from t3backupd.core.config import Config, ScheduleConfig
from t3backupd.core.offsite_config import OffsiteConfig
from t3backupd.core.usermap import User
from t3backupd.root.daemon import describe_changes
from t3backupd.root.served import Served

SECRET = "s3cr3t-in-url"  # noqa: S105  # a test's stand-in, what must never be shown
OFFSITE = OffsiteConfig(repository=f"rest:https://backup:{SECRET}@offsite.example/t3")


def served(config: Config, *names: str) -> Served:
    users = tuple(User(name, 1000 + index, 1000 + index, f"/home/{name}")
                  for index, name in enumerate(names))  # fmt: skip
    return Served(config, users, ())


def test_the_same_config_is_no_changes() -> None:
    assert describe_changes(served(Config(), "ann"), served(Config(), "ann")) == ["no changes"]


def test_users_schedule_and_other_sections_are_named() -> None:
    old = served(Config(), "ann", "bob")
    new_config = replace(Config(), dest="/srv/other",
                         schedule=ScheduleConfig(cron="0 4 * * *", catch_up=False))  # fmt: skip
    assert describe_changes(old, served(new_config, "ann", "cid")) == [
        "users added: cid",
        "users removed: bob",
        f"schedule now '0 4 * * *' ({new_config.schedule.timezone})",
        "changed: dest, schedule options",
    ]


def test_offsite_added_and_removed_are_said() -> None:
    without, with_offsite = served(Config()), served(replace(Config(), offsite=OFFSITE))
    assert describe_changes(without, with_offsite) == ["offsite added"]
    assert describe_changes(with_offsite, without) == ["offsite removed"]


def test_a_reload_changing_only_offsite_names_the_keys_without_their_values() -> None:
    changed = replace(
        OFFSITE,
        repository=f"rest:https://backup:{SECRET}-new@offsite.example/t3",
        keep_daily=14,
        options=("sftp.command=ssh -i /root/key",),
    )
    old = served(replace(Config(), offsite=OFFSITE))
    new = served(replace(Config(), offsite=changed))
    changes = describe_changes(old, new)
    assert changes == ["changed: offsite.repository, offsite.keep_daily, offsite.options"]
    assert SECRET not in " ".join(changes) and "14" not in " ".join(changes)
    assert "/root/key" not in " ".join(changes)


def test_offsite_keys_join_the_other_changed_sections() -> None:
    old = served(replace(Config(), offsite=OFFSITE))
    new = served(replace(Config(), dest="/srv/other",
                         offsite=replace(OFFSITE, check_cron="")))  # fmt: skip
    assert describe_changes(old, new) == ["changed: dest, offsite.check_cron"]

"""A hostile user controls their home and their backup dir: nothing they plant there
may make the root parent (or their own worker) read or change a file they cannot.
Real users, the real CLI and real setuid workers. Needs root."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from support import need
from support.snapshots import MakeUser, json_config, sha256_of, snapshot_outcomes
from support.system import (
    create_state_db,
    log_events,
    run_as,
    sha256sum_check,
    snapshot_files,
    state_path,
    t3backupd,
)

from t3backupd.core.usermap import User

SHADOW = Path("/etc/shadow")


def config_for(sandbox: Path, users: list[User], keep: int = 14, **kwargs: str) -> Path:
    return json_config(sandbox, users, f"[retention]\nkeep = {keep}\n", **kwargs)


def fingerprint(path: Path) -> tuple[str, int, int, int]:
    """Content hash, mode, owner and group of a file (never following a link)."""
    info = os.lstat(path)
    return (
        sha256_of(path),
        stat.S_IMODE(info.st_mode),
        info.st_uid,
        info.st_gid,
    )


def shadow_state() -> tuple[frozenset[bytes], int, int, int]:
    """/etc/shadow's lines, mode and owner. Lines of test users (`t3t*`) are left out:
    other test runs on this host may add or remove theirs at any moment."""
    info = os.lstat(SHADOW)
    lines = frozenset(
        line for line in SHADOW.read_bytes().splitlines() if not line.startswith(b"t3t")
    )
    return lines, stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid


def all_bytes_under(directory: Path) -> list[tuple[Path, bytes]]:
    found = []
    for root, _, files in os.walk(directory):
        for name in files:
            path = Path(root, name)
            if not path.is_symlink():
                found.append((path, path.read_bytes()))
    return found


@pytest.mark.root
def test_source_symlink_to_shadow_fails_with_permission_and_leaks_nothing(
    sandbox: Path, make_user: MakeUser
) -> None:
    need(SHADOW.is_file(), "needs /etc/shadow, the root-only file this test tries to steal")
    attacker, bystander = make_user(), make_user()
    source = state_path(attacker)
    run_as(attacker, ["mkdir", "-p", str(source.parent)])
    run_as(attacker, ["ln", "-s", str(SHADOW), str(source)])
    create_state_db(bystander, size_mb=1)
    shadow_before = shadow_state()

    result = t3backupd(config_for(sandbox, [attacker, bystander]), "snapshot")

    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{attacker.name}: FAILED permission" in result.stdout
    assert snapshot_outcomes(result.stderr) == {
        attacker.name: ("failed", "permission"),
        bystander.name: ("ok", None),
    }
    assert shadow_state() == shadow_before
    assert snapshot_files(sandbox / "dest" / attacker.name) == []
    shadow_lines = [line for line in SHADOW.read_bytes().splitlines() if line.strip()]
    assert any(line.startswith(b"root:") for line in shadow_lines)
    for path, data in all_bytes_under(sandbox / "dest"):
        assert b"root:" not in data, path
        for line in shadow_lines:
            assert line not in data, path


@pytest.mark.root
def test_pruning_a_planted_symlink_removes_only_the_link(
    sandbox: Path, make_user: MakeUser
) -> None:
    user = make_user()
    create_state_db(user, size_mb=1)
    victim = sandbox / "victim"
    victim.write_text("root's precious data\n")
    os.chmod(victim, 0o644)
    victim_checksum = sandbox / "victim.sha256"
    victim_checksum.write_text("also root's\n")
    os.chmod(victim_checksum, 0o644)
    before = (fingerprint(victim), fingerprint(victim_checksum))
    config = config_for(sandbox, [user], keep=1)
    first = t3backupd(config, "snapshot")
    assert first.returncode == 0, first.stdout + first.stderr
    user_dir = sandbox / "dest" / user.name
    link = user_dir / "state-20200101T000000Z.sqlite"
    run_as(user, ["ln", "-s", str(victim), str(link)])
    run_as(user, ["ln", "-s", str(victim_checksum), str(link) + ".sha256"])

    second = t3backupd(config, "snapshot")

    assert second.returncode == 0, second.stdout + second.stderr
    assert not os.path.lexists(link)
    assert not os.path.lexists(str(link) + ".sha256")
    assert (fingerprint(victim), fingerprint(victim_checksum)) == before
    [kept] = snapshot_files(user_dir)
    assert second.stdout.startswith(f"{user.name}: ok {kept} ")
    assert sha256sum_check(user, user_dir, kept).returncode == 0


@pytest.mark.root
def test_user_dir_precreated_as_symlink_is_refused_and_target_untouched(
    sandbox: Path, make_user: MakeUser
) -> None:
    attacker, bystander = make_user(), make_user()
    create_state_db(attacker, size_mb=1)
    create_state_db(bystander, size_mb=1)
    elsewhere = sandbox / "elsewhere"
    elsewhere.mkdir(mode=0o755)
    (elsewhere / "keep").write_text("root-owned\n")
    elsewhere_before = (fingerprint(elsewhere / "keep"), os.lstat(elsewhere))
    dest = sandbox / "dest"
    dest.mkdir(mode=0o755)
    (dest / attacker.name).symlink_to(elsewhere)

    result = t3backupd(config_for(sandbox, [attacker, bystander]), "snapshot")

    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{attacker.name}: FAILED permission" in result.stdout
    assert snapshot_outcomes(result.stderr)[attacker.name] == ("failed", "permission")
    assert snapshot_outcomes(result.stderr)[bystander.name] == ("ok", None)
    assert sorted(os.listdir(elsewhere)) == ["keep"]
    info = os.lstat(elsewhere)
    assert (fingerprint(elsewhere / "keep"), info.st_uid, stat.S_IMODE(info.st_mode)) == (
        elsewhere_before[0],
        elsewhere_before[1].st_uid,
        stat.S_IMODE(elsewhere_before[1].st_mode),
    )
    assert (dest / attacker.name).is_symlink()


@pytest.mark.root
def test_user_dir_owned_by_another_user_is_refused(sandbox: Path, make_user: MakeUser) -> None:
    victim, other = make_user(), make_user()
    create_state_db(victim, size_mb=1)
    dest = sandbox / "dest"
    squatted = dest / victim.name
    squatted.mkdir(parents=True, mode=0o700)
    os.chown(squatted, other.uid, other.gid)
    os.chmod(dest, 0o755)

    result = t3backupd(config_for(sandbox, [victim]), "snapshot")

    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{victim.name}: FAILED permission" in result.stdout
    assert snapshot_outcomes(result.stderr) == {victim.name: ("failed", "permission")}
    info = os.lstat(squatted)
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (other.uid, other.gid, 0o700)
    assert os.listdir(squatted) == []


@pytest.mark.root
def test_bad_usermap_lines_are_skipped_with_line_numbers_and_valid_users_proceed(
    sandbox: Path, make_user: MakeUser
) -> None:
    first, second = make_user(), make_user()
    create_state_db(first, size_mb=1)
    create_state_db(second, size_mb=1)
    usermap = "\n".join(
        [
            "# ttyd user map",  # 1
            "",  # 2
            f"alice = {first.name}",  # 3
            "admin=root",  # 4
            "evil=../x",  # 5
            "ghost=nosuchuser",  # 6
            "a=b=c",  # 7
            "   # indented comment",  # 8
            "root",  # 9
            "   ",  # 10
            f"bob={second.name}",  # 11
            f"alice2={first.name}",  # 12: duplicate collapses silently
        ]
    )
    config = config_for(sandbox, [first, second], usermap_text=usermap + "\n")

    result = t3backupd(config, "snapshot")

    assert result.returncode == 0, result.stdout + result.stderr
    events = log_events(result.stderr)
    skipped = {
        event["line"]: event["name"]
        for event in events
        if event["event"] == "usermap entry skipped"
    }
    assert skipped == {4: "root", 5: "../x", 6: "nosuchuser", 7: "a=b=c", 9: "root"}
    assert all(
        event["level"] == "warning" for event in events if event["event"] == "usermap entry skipped"
    )
    assert snapshot_outcomes(result.stderr) == {first.name: ("ok", None), second.name: ("ok", None)}
    for user in (first, second):
        [name] = snapshot_files(sandbox / "dest" / user.name)
        assert sha256sum_check(user, sandbox / "dest" / user.name, name).returncode == 0
    assert sorted(os.listdir(sandbox / "dest")) == sorted([first.name, second.name])
    assert not (sandbox / "x").exists()

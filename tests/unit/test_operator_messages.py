"""Messages an operator reads (issue 12, item 7) and check-config's pure helpers."""

from __future__ import annotations

from pathlib import Path

import pytest

from t3backupd.core.config import parse_config
from t3backupd.core.errors import SnapshotNotFound
from t3backupd.core.naming import parse_name
from t3backupd.core.selection import (
    MAX_COMMAND_CHARS,
    choose_snapshot,
    describe_holders,
    parse_snapshot_request,
)
from t3backupd.core.usermap import User
from t3backupd.root.checkconfig import (
    DEFAULT_WRITABLE,
    effective_lines,
    installed_unit,
    warnings_for,
    writable_paths,
)

SHIPPED_UNIT = Path(__file__).resolve().parents[2] / "packaging/systemd/t3backupd.service"
ONE = parse_name("state-20250101T000000Z.sqlite")


@pytest.mark.parametrize(
    ("request_text", "message"),
    [
        ("x", "no snapshot labelled 'x'"),
        ("latest", "no snapshot at all"),
        ("state-20000101T000000Z.sqlite", "no snapshot named 'state-20000101T000000Z.sqlite'"),
    ],
)
def test_a_missing_snapshot_is_named_in_plain_words(request_text: str, message: str) -> None:
    assert ONE is not None
    entries = [(ONE, False)]  # not a regular file: latest and labels skip it
    request = parse_snapshot_request(request_text)
    with pytest.raises(SnapshotNotFound) as caught:
        choose_snapshot(entries, request)
    assert str(caught.value) == message


def test_a_long_command_line_is_cut_with_an_ellipsis_and_a_short_one_is_not() -> None:
    long = "/usr/bin/python3 " + "/very/long/path" * 20
    line = describe_holders([(7, long), (8, "t3-serve")])
    shown = line.split("pid 7 (", 1)[1].split("), pid 8", 1)[0]
    assert shown.endswith("...") and len(shown) == MAX_COMMAND_CHARS
    assert long.startswith(shown[:-3])
    assert "pid 8 (t3-serve)" in line


def test_the_shipped_unit_s_writable_paths_are_the_known_default() -> None:
    paths = writable_paths([SHIPPED_UNIT.read_text()])
    assert paths == list(DEFAULT_WRITABLE)


def test_drop_ins_add_paths_and_an_empty_assignment_resets_them() -> None:
    unit = "[Service]\nReadWritePaths=/var/backups/t3-state\nReadWritePaths=-/home\n"
    assert writable_paths([unit, "[Service]\nReadWritePaths=/srv/b /srv/c\n"]) == [
        "/var/backups/t3-state", "/home", "/srv/b", "/srv/c",
    ]  # fmt: skip
    assert writable_paths([unit, "[Service]\nReadWritePaths=\nReadWritePaths=/srv/b\n"]) == [
        "/srv/b"
    ]


def test_an_installed_unit_and_its_drop_in_are_read(tmp_path: Path) -> None:
    (tmp_path / "t3backupd.service").write_text(SHIPPED_UNIT.read_text())
    (tmp_path / "t3backupd.service.d").mkdir()
    (tmp_path / "t3backupd.service.d" / "dest.conf").write_text(
        "[Service]\nReadWritePaths=/srv/t3\n"
    )
    path, texts = installed_unit([str(tmp_path / "none"), str(tmp_path)])
    assert path == str(tmp_path / "t3backupd.service")
    assert writable_paths(texts)[-1] == "/srv/t3"
    assert installed_unit([str(tmp_path / "none")]) == (None, [])


def test_drop_ins_of_every_directory_are_read_as_systemd_merges_them(tmp_path: Path) -> None:
    # The package's unit in /lib, `systemctl edit`'s drop-in in /etc.
    etc, lib = tmp_path / "etc", tmp_path / "lib"
    for directory in (etc, lib):
        (directory / "t3backupd.service.d").mkdir(parents=True)
    (lib / "t3backupd.service").write_text(SHIPPED_UNIT.read_text())
    (etc / "t3backupd.service.d" / "override.conf").write_text(
        "[Service]\nReadWritePaths=/srv/t3-offsite\n"
    )
    (lib / "t3backupd.service.d" / "a.conf").write_text("[Service]\nReadWritePaths=/srv/a\n")
    (lib / "t3backupd.service.d" / "override.conf").write_text("[Service]\nReadWritePaths=\n")
    path, texts = installed_unit([str(etc), str(lib)])
    assert path == str(lib / "t3backupd.service")
    # a.conf, then /etc's override.conf (hiding /lib's, which would reset the list).
    assert writable_paths(texts)[-2:] == ["/srv/a", "/srv/t3-offsite"]


def test_warnings_name_an_offsite_local_repository_outside_the_writable_paths() -> None:
    table = {"offsite": {"repository": "/srv/t3-offsite", "password_file": "/etc/p"}}
    config = parse_config(table, "c.toml", {})
    found = warnings_for(config, [], None, list(DEFAULT_WRITABLE))
    assert len(found) == 1 and found[0].startswith("offsite.repository /srv/t3-offsite is outside")
    assert "read_only" in found[0] and "ReadWritePaths=/srv/t3-offsite" in found[0]
    assert warnings_for(config, [], None, [*DEFAULT_WRITABLE, "/srv/t3-offsite"]) == []
    remote = parse_config(
        {"offsite": {"repository": "s3:https://s3.example.net/b", "password_file": "/etc/p",
                     "cache_dir": "/root/.cache/restic"}}, "c.toml", {},
    )  # fmt: skip
    (cache,) = warnings_for(remote, [], None, list(DEFAULT_WRITABLE))
    assert cache.startswith("offsite.cache_dir /root/.cache/restic is outside")


def test_warnings_name_dest_and_sources_outside_the_writable_paths() -> None:
    config = parse_config({"source": "/data/{user}/state.sqlite"}, "c.toml",
                          {"T3_BACKUP_DEST": "/srv/x"})  # fmt: skip
    alice = User("alice", 2001, 2001, "/home/alice")
    found = warnings_for(config, [alice], None, list(DEFAULT_WRITABLE))
    assert len(found) == 2
    assert found[0].startswith("dest /srv/x (environment T3_BACKUP_DEST) is outside")
    assert "alice: source directory /data/alice" in found[1]
    fine = parse_config({}, "c.toml", {})
    assert warnings_for(fine, [alice], None, list(DEFAULT_WRITABLE)) == []
    # /var/backups/t3-state-old is not inside /var/backups/t3-state.
    near = parse_config({"dest": "/var/backups/t3-state-old"}, "c.toml", {})
    assert len(warnings_for(near, [alice], None, list(DEFAULT_WRITABLE))) == 1


def test_effective_lines_show_every_value_and_its_origin() -> None:
    config = parse_config({"retention": {"keep": 3}}, "c.toml", {"T3_BACKUP_TIMEOUT": "60"})
    lines = {line.split()[0]: line for line in effective_lines(config)}
    assert lines["retention.keep"].endswith("= 3  (file)")
    assert lines["snapshot.timeout_seconds"].endswith("= 60  (environment T3_BACKUP_TIMEOUT)")
    assert lines["schedule.catch_up"].endswith("= true  (default)")


def test_warnings_name_a_ledger_dir_outside_the_writable_paths() -> None:
    offsite = {"repository": "s3:https://s3.example.net/b", "password_file": "/etc/p"}
    fine = parse_config({"offsite": offsite}, "c.toml", {})
    assert warnings_for(fine, [], None, list(DEFAULT_WRITABLE)) == []
    moved = parse_config({"offsite": {**offsite, "ledger_dir": "/srv/ledger"}}, "c.toml", {})
    (ledger,) = warnings_for(moved, [], None, list(DEFAULT_WRITABLE))
    assert ledger.startswith("offsite.ledger_dir /srv/ledger is outside")
    assert "none is uploaded" in ledger

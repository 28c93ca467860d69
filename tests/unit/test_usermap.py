"""The usermap (t3backupd.core.usermap): the legacy script's meaning, and resolution through a
passwd lookup passed in (a dict-backed fake: the one narrow boundary faked here)."""

from __future__ import annotations

import pwd
from pathlib import Path

import pytest

from t3backupd.core.usermap import (
    Lookup,
    Problem,
    User,
    UsermapEntry,
    load_users,
    parse_usermap,
    resolve_users,
)


def passwd(
    name: str, uid: int, home: str | None = None, gid: int | None = None
) -> pwd.struct_passwd:
    return pwd.struct_passwd(
        (name, "x", uid, uid if gid is None else gid, "", home or f"/home/{name}", "/bin/sh")
    )


def fake_lookup(*records: pwd.struct_passwd) -> Lookup:
    table = {record.pw_name: record for record in records}

    def lookup(name: str) -> pwd.struct_passwd:
        return table[name]  # KeyError for unknown users, like pwd.getpwnam

    return lookup


def names(entries: list[UsermapEntry]) -> list[str]:
    return [entry.name for entry in entries]


# --- parsing --------------------------------------------------------------------------


def test_each_line_names_the_os_user_on_its_right_hand_side() -> None:
    entries, problems = parse_usermap("alice@example.org=alice\nbob=robert\n")
    assert entries == [UsermapEntry(1, "alice"), UsermapEntry(2, "robert")]
    assert problems == []


def test_comments_including_indented_ones_and_blank_lines_are_ignored() -> None:
    text = "# header = with equals\n\n   # indented = comment\n\t#tab\n   \ncarol=carol\n"
    entries, problems = parse_usermap(text)
    assert entries == [UsermapEntry(6, "carol")]
    assert problems == []


def test_whitespace_around_the_right_hand_side_is_stripped() -> None:
    entries, problems = parse_usermap("a =  alice  \nb=\tbob\t\nc = ca\r\n")
    assert names(entries) == ["alice", "bob", "ca"]
    assert problems == []


def test_whitespace_inside_the_name_is_a_problem_not_another_user() -> None:
    """The legacy awk joined `nc 3` into `nc3` and backed up that user (issue 21, 8)."""
    entries, problems = parse_usermap("x=nc 3\nb=\tbo b\t\nc=carol\n")
    assert names(entries) == ["carol"]
    assert [(p.line, p.name) for p in problems] == [(1, "nc 3"), (2, "bo b")]
    assert "whitespace inside the name" in str(problems[0])


def test_windows_line_endings_are_tolerated() -> None:
    entries, problems = parse_usermap("a=alice\r\n# c\r\nb=bob\r\n")
    assert entries == [UsermapEntry(1, "alice"), UsermapEntry(3, "bob")]
    assert problems == []


def test_duplicates_collapse_keeping_the_first_line_number() -> None:
    entries, problems = parse_usermap("x=alice\ny=bob\nz=alice\nw= alice \n")
    assert entries == [UsermapEntry(1, "alice"), UsermapEntry(2, "bob")]
    assert problems == []


@pytest.mark.parametrize("line", ["alice", "a=b=c", "a==alice", "=x=", "just words"])
def test_lines_without_exactly_one_equals_are_problems_with_their_line_number(line: str) -> None:
    entries, problems = parse_usermap(f"# comment\nok=ok\n{line}\nfine=fine\n")
    assert names(entries) == ["ok", "fine"]
    assert [problem.line for problem in problems] == [3]
    assert "line 3" in str(problems[0])


def test_line_numbers_count_only_newlines_as_awk_does() -> None:
    # \f, \x1c and \u2028 are line breaks to str.splitlines() but not to awk or editors.
    entries, problems = parse_usermap("# a\fcomment\nbad\x1cline\nu=\u2028alice\nb=bob\n")
    assert [problem.line for problem in problems] == [2]
    assert entries == [UsermapEntry(3, "alice"), UsermapEntry(4, "bob")]


def test_empty_right_hand_side_is_passed_on_and_refused_at_resolution() -> None:
    entries, _ = parse_usermap("a=\n")
    assert entries == [UsermapEntry(1, "")]
    users, refused = resolve_users(entries, 1000, fake_lookup())
    assert users == []
    assert [(problem.line, problem.reason) for problem in refused] == [
        (1, "not a valid login name")
    ]


def test_empty_file_has_no_entries_and_no_problems() -> None:
    assert parse_usermap("") == ([], [])


def test_problem_text_names_line_and_value() -> None:
    assert str(Problem(7, "bob", "no such user")) == "line 7 ('bob'): no such user"


# --- resolution -----------------------------------------------------------------------


def test_valid_users_resolve_in_usermap_order() -> None:
    lookup = fake_lookup(passwd("carol", 1002), passwd("alice", 1000), passwd("bob", 1001))
    entries, _ = parse_usermap("c=carol\na=alice\nb=bob\n")
    users, problems = resolve_users(entries, 1000, lookup)
    assert users == [
        User("carol", 1002, 1002, "/home/carol"),
        User("alice", 1000, 1000, "/home/alice"),
        User("bob", 1001, 1001, "/home/bob"),
    ]
    assert problems == []


def test_resolved_user_carries_gid_and_home_from_passwd() -> None:
    lookup = fake_lookup(passwd("dave", 1500, home="/srv/dave", gid=100))
    users, _ = resolve_users([UsermapEntry(1, "dave")], 1000, lookup)
    assert users == [User("dave", 1500, 100, "/srv/dave")]


def test_root_is_refused_even_with_min_uid_zero() -> None:
    lookup = fake_lookup(passwd("root", 0, home="/root"))
    users, problems = resolve_users([UsermapEntry(4, "root")], 0, lookup)
    assert users == []
    assert problems == [Problem(4, "root", "root is never served")]


def test_alias_of_root_under_another_name_is_refused() -> None:
    lookup = fake_lookup(passwd("toor", 0, home="/root"))
    users, problems = resolve_users([UsermapEntry(1, "toor")], 1000, lookup)
    assert users == []
    assert problems[0].reason == "root is never served"


def test_uid_below_min_uid_is_refused() -> None:
    lookup = fake_lookup(passwd("www-data", 33, home="/var/www"))
    users, problems = resolve_users([UsermapEntry(2, "www-data")], 1000, lookup)
    assert users == []
    assert problems == [Problem(2, "www-data", "uid 33 is below min_uid 1000")]


def test_uid_equal_to_min_uid_is_served() -> None:
    users, _ = resolve_users([UsermapEntry(1, "alice")], 1000, fake_lookup(passwd("alice", 1000)))
    assert [user.name for user in users] == ["alice"]


def test_unknown_user_is_refused() -> None:
    users, problems = resolve_users([UsermapEntry(3, "ghost")], 1000, fake_lookup())
    assert users == []
    assert problems == [Problem(3, "ghost", "no such user")]


@pytest.mark.parametrize("name", ["../x", "a/b", "", "-x", "UPPER", ".", "..", "a b", "a" * 33])
def test_invalid_login_names_are_refused_without_a_lookup(name: str) -> None:
    looked_up: list[str] = []

    def lookup(requested: str) -> pwd.struct_passwd:
        looked_up.append(requested)
        return passwd(requested, 2000)

    users, problems = resolve_users([UsermapEntry(5, name)], 1000, lookup)
    assert users == []
    assert problems == [Problem(5, name, "not a valid login name")]
    assert looked_up == []


@pytest.mark.parametrize("name", ["alice", "_svc", "a-b_c", "u1", "a" * 32])
def test_ordinary_login_names_are_valid(name: str) -> None:
    users, problems = resolve_users([UsermapEntry(1, name)], 1000, fake_lookup(passwd(name, 1000)))
    assert [user.name for user in users] == [name]
    assert problems == []


def test_second_name_for_the_same_uid_is_refused() -> None:
    lookup = fake_lookup(passwd("alice", 1000), passwd("alias", 1000, home="/home/alice"))
    users, problems = resolve_users(
        [UsermapEntry(1, "alice"), UsermapEntry(2, "alias")], 1000, lookup
    )
    assert [user.name for user in users] == ["alice"]
    assert problems == [Problem(2, "alias", "same uid as an earlier entry")]


def test_relative_home_directory_is_refused() -> None:
    lookup = fake_lookup(passwd("odd", 1000, home="home/odd"))
    users, problems = resolve_users([UsermapEntry(1, "odd")], 1000, lookup)
    assert users == []
    assert problems[0].reason == "home directory is not absolute"


def test_one_bad_line_never_stops_the_others() -> None:
    text = "\n".join(
        [
            "a=alice",  # 1 ok
            "r=root",  # 2 root
            "g=ghost",  # 3 unknown
            "broken line",  # 4 no '='
            "s=www-data",  # 5 system user
            "p=../etc",  # 6 invalid name
            "b=bob",  # 7 ok
            "d=alias",  # 8 same uid as alice
            "c=carol",  # 9 ok
        ]
    )
    lookup = fake_lookup(
        passwd("alice", 1000),
        passwd("root", 0, home="/root"),
        passwd("www-data", 33, home="/var/www"),
        passwd("bob", 1001),
        passwd("alias", 1000),
        passwd("carol", 1002),
    )
    entries, parse_problems = parse_usermap(text)
    users, refused = resolve_users(entries, 1000, lookup)
    assert [user.name for user in users] == ["alice", "bob", "carol"]
    assert [problem.line for problem in parse_problems] == [4]
    assert [problem.line for problem in refused] == [2, 3, 5, 6, 8]


# --- loading from disk (tmp_path only; real passwd database) -------------------------


def test_load_users_reports_problems_sorted_by_line(tmp_path: Path) -> None:
    usermap = tmp_path / "ttyd-user-map"
    usermap.write_text("x=nobody-such-user-t3\nbroken\ny=root\n", encoding="utf-8")
    users, problems = load_users(str(usermap), 1000)
    assert users == []
    assert [problem.line for problem in problems] == [1, 2, 3]


def test_load_users_as_non_root_serves_only_its_own_uid(tmp_path: Path) -> None:
    # "nobody" (uid 65534) and "daemon" (uid 1) exist on every Debian system.
    usermap = tmp_path / "ttyd-user-map"
    usermap.write_text("d=daemon\nn=nobody\n", encoding="utf-8")
    users, problems = load_users(str(usermap), 1, own_uid=65534)
    assert [user.name for user in users] == ["nobody"]
    assert [(problem.line, problem.name) for problem in problems] == [(1, "daemon")]
    assert "not running as root" in problems[0].reason


def test_load_users_raises_oserror_for_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        load_users(str(tmp_path / "absent"), 1000)

"""The usermap (`/etc/ttyd-user-map`): which OS users to back up.

Same meaning as the legacy script: every non-comment line with exactly one `=`
names an OS user on its right-hand side (whitespace around it stripped); duplicates
collapse. One difference: the legacy awk also deleted whitespace inside the name
(`x=nc 3` backed up `nc3`); such a line is skipped and reported here, since a login name
never holds a space and joining the words silently served another user.
Parsing and resolution are pure (the passwd lookup is passed in); only
`load_usermap` touches the disk, and only a root-owned file.
"""

from __future__ import annotations

import pwd
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

# POSIX-ish login names as Debian's adduser accepts them (no path characters).
LOGIN_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")


@dataclass(frozen=True)
class UsermapEntry:
    line: int
    name: str


@dataclass(frozen=True)
class User:
    """An OS user resolved through the passwd database."""

    name: str
    uid: int
    gid: int
    home: str


@dataclass(frozen=True)
class Problem:
    """A usermap line that was skipped, and why (logged as a warning)."""

    line: int
    name: str
    reason: str

    def __str__(self) -> str:
        return f"line {self.line} ({self.name!r}): {self.reason}"


def parse_usermap(text: str) -> tuple[list[UsermapEntry], list[Problem]]:
    """Right-hand sides of the usermap's `authentik_name=os_user` lines, first occurrence.

    Blank and comment lines (first non-blank character `#`) are ignored. Any other line
    without exactly one `=` is ignored as the legacy awk did, and reported as a problem.
    """
    entries: list[UsermapEntry] = []
    problems: list[Problem] = []
    seen: set[str] = set()
    # split("\n"), not splitlines(): awk (and editors) count only newlines, while
    # splitlines() also breaks at \f, \x1c, \x85, \u2028..., shifting line numbers.
    for number, line in enumerate(text.split("\n"), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if line.count("=") != 1:
            problems.append(Problem(number, stripped[:64], "not of the form name=os_user"))
            continue
        name = line.split("=", 1)[1].strip()
        if len(name.split()) > 1:
            problems.append(
                Problem(number, name[:64], "whitespace inside the name (never joined into one)")
            )
            continue
        if name in seen:
            continue
        seen.add(name)
        entries.append(UsermapEntry(number, name))
    return entries, problems


Lookup = Callable[[str], "pwd.struct_passwd"]


def resolve_users(
    entries: Iterable[UsermapEntry],
    min_uid: int,
    lookup: Lookup = pwd.getpwnam,
    max_uid: int | None = None,
) -> tuple[list[User], list[Problem]]:
    """Resolve entries through `lookup`; refuse invalid names, unknown users, root and
    uids below `min_uid` or above `max_uid` (`nobody`). One bad line never stops the
    others."""
    users: list[User] = []
    problems: list[Problem] = []
    seen_uids: set[int] = set()
    for entry in entries:
        if LOGIN_NAME.fullmatch(entry.name) is None:
            problems.append(Problem(entry.line, entry.name, "not a valid login name"))
            continue
        try:
            record = lookup(entry.name)
        except KeyError:
            problems.append(Problem(entry.line, entry.name, "no such user"))
            continue
        if record.pw_uid == 0:
            problems.append(Problem(entry.line, entry.name, "root is never served"))
            continue
        if record.pw_uid < min_uid:
            problems.append(
                Problem(entry.line, entry.name, f"uid {record.pw_uid} is below min_uid {min_uid}")
            )
            continue
        if max_uid is not None and record.pw_uid > max_uid:
            problems.append(
                Problem(entry.line, entry.name, f"uid {record.pw_uid} is above max_uid {max_uid}")
            )
            continue
        if record.pw_uid in seen_uids:
            problems.append(Problem(entry.line, entry.name, "same uid as an earlier entry"))
            continue
        if not record.pw_dir.startswith("/"):
            problems.append(Problem(entry.line, entry.name, "home directory is not absolute"))
            continue
        seen_uids.add(record.pw_uid)
        users.append(User(record.pw_name, record.pw_uid, record.pw_gid, record.pw_dir))
    return users, problems


# Why an entry is not served in non-root mode (a user running the CLI for themselves).
NOT_ROOT_REASON = "not running as root: cannot switch to another user"


# /etc/login.defs' UID_MAX when it has none (shadow's own default).
DEFAULT_UID_MAX = 60000


def system_uid_max(login_defs: str = "/etc/login.defs") -> int:
    """UID_MAX from /etc/login.defs (the highest uid useradd gives a regular user), or
    60000 when it is missing or unreadable: `nobody` (65534) is above either."""
    try:
        text = Path(login_defs).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return DEFAULT_UID_MAX
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "UID_MAX" and fields[1].isdigit():
            return int(fields[1])
    return DEFAULT_UID_MAX


def read_usermap(path: str) -> str:
    """Text of the usermap. Raises OSError if it cannot be read."""
    return Path(path).read_text(encoding="utf-8", errors="replace")


def load_users(
    path: str,
    min_uid: int,
    own_uid: int | None = None,
    *,
    max_uid: int | None = None,
    reader: Callable[[str], str] = read_usermap,
) -> tuple[list[User], list[Problem]]:
    """Read and resolve the usermap at `path`.

    `own_uid`: when not running as root, only entries naming this uid can be served
    (no uid switch is possible); the others are returned as problems.
    Raises OSError if the file cannot be read (or what `reader` raises).
    """
    entries, problems = parse_usermap(reader(path))
    users, refused = resolve_users(entries, min_uid, max_uid=max_uid)
    problems = sorted(problems + refused, key=lambda problem: problem.line)
    if own_uid is None:
        return users, problems
    line_of = {entry.name: entry.line for entry in entries}
    served = []
    for user in users:
        if user.uid == own_uid:
            served.append(user)
        else:
            reason = NOT_ROOT_REASON
            problems.append(Problem(line_of.get(user.name, 0), user.name, reason))
    return served, problems

"""Files the daemon trusts (config, usermap, TLS certificate and key): root's alone.

A file is trusted when it, and every directory and link on the way to it, is owned by
root (or, when not running as root, by the invoking user) and is not writable by group
or others. A world-writable directory is allowed only with the sticky bit (/tmp,
/var/tmp), where nobody else can rename or remove what root put there. Anything else
is refused with one line naming the path and what is wrong: a user who could write the
usermap (or a directory or link leading to it) could have root serve any account.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat

MAX_LINKS = 40


class UntrustedFile(Exception):
    """One clear line: which path, and why it is not trusted."""


def _trusted_owners() -> tuple[int, ...]:
    return (0,) if os.geteuid() == 0 else (0, os.geteuid())


def check_owner_and_mode(path: str, info: os.stat_result, kind: str) -> None:
    if info.st_uid not in _trusted_owners():
        raise UntrustedFile(f"{path}: {kind} is owned by uid {info.st_uid}, not by root")
    if stat.S_ISLNK(info.st_mode):
        return
    writable = info.st_mode & 0o022
    if writable and not (stat.S_ISDIR(info.st_mode) and info.st_mode & stat.S_ISVTX):
        raise UntrustedFile(f"{path}: {kind} is writable by group or others")


def resolve_trusted(path: str) -> tuple[str, os.stat_result]:
    """Walk `path` from `/`, checking every directory, link and the file itself.

    Returns the resolved path and the file's stat. Raises UntrustedFile (or
    FileNotFoundError / OSError for what cannot be looked at).
    """
    if not path.startswith("/"):
        raise UntrustedFile(f"{path}: not an absolute path")
    pending = [part for part in path.split("/") if part not in ("", ".")]
    pending.reverse()
    current = "/"
    check_owner_and_mode("/", os.lstat("/"), "directory")
    links = 0
    while pending:
        part = pending.pop()
        if part == "..":
            current = os.path.dirname(current.rstrip("/")) or "/"
            continue
        candidate = os.path.join(current, part)
        info = os.lstat(candidate)
        if stat.S_ISLNK(info.st_mode):
            check_owner_and_mode(candidate, info, "link")
            links += 1
            if links > MAX_LINKS:
                raise UntrustedFile(f"{path}: too many links")
            target = os.readlink(candidate)
            if target.startswith("/"):
                current = "/"
            pending.extend(reversed([p for p in target.split("/") if p not in ("", ".")]))
            continue
        last = not pending
        if not last and not stat.S_ISDIR(info.st_mode):
            raise UntrustedFile(f"{candidate}: not a directory")
        check_owner_and_mode(candidate, info, "file" if last else "directory")
        current = candidate
    info = os.lstat(current)
    if not stat.S_ISREG(info.st_mode):
        raise UntrustedFile(f"{path}: not a regular file")
    return current, info


def read_trusted(path: str) -> bytes:
    """The content of a trusted file, read through a descriptor that is checked to be the
    file just walked (no window for a swap). Raises UntrustedFile or OSError."""
    return read_trusted_file(path)[0]


def read_trusted_file(path: str) -> tuple[bytes, os.stat_result]:
    """`read_trusted`, with the stat of the file read (its mode says who else can read it)."""
    resolved, info = resolve_trusted(path)
    fd = os.open(resolved, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        opened = os.fstat(fd)
        if (opened.st_dev, opened.st_ino) != (info.st_dev, info.st_ino):
            raise UntrustedFile(f"{path}: replaced while being checked")
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks), opened
    finally:
        os.close(fd)


def read_own_file_at(dir_fd: int, name: str, path: str, limit: int, private: bool) -> bytes | None:
    """The bytes of this process's own file `name` in an open directory it trusts (None:
    no such file), opened without following a link and without blocking on a FIFO.
    Refused (UntrustedFile) unless it is a regular file owned by this uid, not writable
    by group or others (nor readable, when `private`), and at most `limit` bytes: the
    one way root reads back a record it wrote itself (the ledger, the check record)."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                     dir_fd=dir_fd)  # fmt: skip
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise UntrustedFile(f"{path}: not a regular file")
        if info.st_uid != os.geteuid():
            raise UntrustedFile(f"{path}: owned by uid {info.st_uid}, not {os.geteuid()}")
        if info.st_mode & (0o077 if private else 0o022):
            expected = "0600" if private else "not writable by group or others"
            raise UntrustedFile(f"{path}: mode {stat.S_IMODE(info.st_mode):o}; expected {expected}")
        if info.st_size > limit:
            raise UntrustedFile(f"{path}: larger than {limit} bytes")
        return file.read(limit + 1)


def trusted_directory(path: str, mode: int = 0o700) -> int:
    """An open descriptor of directory `path`, created (`mode`) where missing, after
    checking every directory from `/` like a trusted file's: root's (or, not as root, the
    invoking user's) and not writable by group or others unless sticky. No link is
    followed anywhere (each step is an O_NOFOLLOW open relative to the one before), so a
    link planted in /tmp can neither redirect root's mkdir nor its chmod. The directory
    itself is then made `mode` through its descriptor. Raises UntrustedFile (one line
    naming the path) or OSError. The caller closes the descriptor."""
    if not path.startswith("/"):
        raise UntrustedFile(f"{path}: not an absolute path")
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise UntrustedFile(f"{path}: '..' is not allowed")
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open("/", flags)
    current = "/"
    try:
        check_owner_and_mode(current, os.fstat(fd), "directory")
        for part in parts:
            current = os.path.join(current, part)
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, mode, dir_fd=fd)
            try:
                child = os.open(part, flags, dir_fd=fd)
            except OSError as error:
                if os.path.islink(current) or error.errno == errno.ELOOP:
                    raise UntrustedFile(f"{current}: is a link; give the real path") from None
                raise
            os.close(fd)
            fd = child
            check_owner_and_mode(current, os.fstat(fd), "directory")
        os.fchmod(fd, mode)
        return fd
    except BaseException:
        os.close(fd)
        raise


def directory_problem(path: str) -> str | None:
    """Why `trusted_directory(path)` would refuse `path`, looking only (lstat, nothing
    created or changed); None when it would not. For check-config."""
    current = "/"
    for part in [p for p in path.split("/") if p not in ("", ".")]:
        current = os.path.join(current, part)
        try:
            info = os.lstat(current)
        except FileNotFoundError:
            return None  # created 0700 by root at first use
        except OSError as error:
            return f"{current}: {error.strerror}"
        if stat.S_ISLNK(info.st_mode):
            return f"{current}: is a link; give the real path"
        if not stat.S_ISDIR(info.st_mode):
            return f"{current}: not a directory"
        try:
            check_owner_and_mode(current, info, "directory")
        except UntrustedFile as error:
            return str(error)
    return None

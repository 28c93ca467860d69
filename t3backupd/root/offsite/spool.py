"""Root's spool: where a user's stream lands before any engine sees a byte of it.

A user sets the pace of their own stream (their worker can be frozen or slowed by them:
it is dumpable again after setuid and exec). Received straight into the engine, that
pace would hold the engine's process and the repository lock, and so every other user's
upload, forget, prune and check. So the stream is first received here, with its
deadlines, size cap and sha256 check, into an unlinked 0600 file in `offsite.cache_dir`
(root's own 0700 directory, trusted like the config: ours all the way up, no link
followed);
only a complete, verified spool is handed to the engine, which then reads at root's
pace. The file has no name from the moment it exists, so nothing is left behind by a
crash or a stop, and nobody but this process can reach it.
"""

from __future__ import annotations

import os
import secrets

from t3backupd.root.offsite.engine import OffsiteError
from t3backupd.root.trusted import UntrustedFile, trusted_directory

PREFIX = ".t3backupd-spool-"


def open_spool(cache_dir: str, size: int) -> int:
    """A new, empty, unlinked 0600 file in `cache_dir` with room for `size` bytes (the
    recorded size: checked against the free space first). Raises OffsiteError:
    `no_space`, or `failed` when the directory cannot be used."""
    try:
        dir_fd = trusted_directory(cache_dir)
    except (OSError, UntrustedFile) as error:
        raise OffsiteError("failed", f"spool in {cache_dir}: {error}") from None
    try:
        stats = os.fstatvfs(dir_fd)
        free = stats.f_bavail * stats.f_frsize
        if free < size:
            raise OffsiteError(
                "no_space", f"spool in {cache_dir}: {size} bytes needed, {free} free"
            )
        name = PREFIX + secrets.token_hex(8)
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(name, flags, 0o600, dir_fd=dir_fd)
        except OSError as error:
            raise OffsiteError("failed", f"spool in {cache_dir}: {error.strerror}") from None
        try:
            os.unlink(name, dir_fd=dir_fd)
        except OSError as error:
            os.close(fd)
            raise OffsiteError("failed", f"spool in {cache_dir}: {error.strerror}") from None
        return fd
    finally:
        os.close(dir_fd)

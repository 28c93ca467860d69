"""A FUSE file system that never answers a lookup, with Debian's python3-pyfuse3:
`/usr/bin/python3 fuse_staller.py MOUNTPOINT READY_FILE OWNER_UID OWNER_GID`.

A user can mount it over their own `~/.t3/userdata` where /dev/fuse is open to users
(Debian's default, 0666). Where it is not (a container's 0600 /dev/fuse), the tests run
it as root with allow_other over the user's directory, owned by the user: what the
worker meets in the kernel is the same.

Mounted over the user's own `~/.t3/userdata`, it leaves any process that looks up a
name there waiting in the kernel: once the request has been read by this server, even
SIGKILL cannot end the wait (the task is in uninterruptible sleep until an answer or
until this server goes, which aborts the connection).
"""

from __future__ import annotations

import os
import stat
import sys
from typing import Any

import pyfuse3
import trio


async def stall() -> None:
    """Never answer, not even an interrupt (a cancelled handler would reply EINTR)."""
    with trio.CancelScope(shield=True):
        await trio.sleep_forever()


class Staller(pyfuse3.Operations):  # type: ignore[misc]
    async def getattr(self, inode: int, ctx: Any = None) -> Any:
        if inode != pyfuse3.ROOT_INODE:
            await stall()
        entry = pyfuse3.EntryAttributes()
        entry.st_ino = inode
        entry.st_mode = stat.S_IFDIR | 0o700
        entry.st_nlink = 2
        entry.st_uid = int(sys.argv[3])
        entry.st_gid = int(sys.argv[4])
        entry.attr_timeout = 0
        entry.entry_timeout = 0
        return entry

    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> Any:
        with open(sys.argv[2] + ".stalled", "a") as note:
            note.write(f"{name.decode(errors='replace')}\n")
        await stall()


def main() -> None:
    mountpoint, ready = sys.argv[1], sys.argv[2]
    options = set(pyfuse3.default_options)
    options.add("fsname=t3staller")
    if os.geteuid() == 0:
        options.add("allow_other")
    pyfuse3.init(Staller(), mountpoint, options)
    with open(ready, "w") as note:
        note.write("ready\n")
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=True)


if __name__ == "__main__":
    main()

"""A FUSE file system that never answers (support/fuse_staller.py), mounted over a user's
`~/.t3/userdata`: a worker that looks up its source there waits in the kernel (state D),
beyond the reach of SIGTERM and, once the request is read, of SIGKILL too."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest

from support import need
from support.system import IS_ROOT
from t3backupd.core.usermap import User

FUSE_STALLER = Path(__file__).parent / "fuse_staller.py"
SYSTEM_PYTHON = "/usr/bin/python3"
Mount = Callable[[User], tuple[Path, subprocess.Popen[bytes]]]


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def process_state(pid: int) -> str:
    """The kernel's one-letter states of `pid`'s threads (R, S, D, Z...), "" if gone."""
    states = ""
    try:
        for task in sorted(os.listdir(f"/proc/{pid}/task")):
            with suppress(OSError, IndexError):
                states += Path(f"/proc/{pid}/task/{task}/stat").read_text().rsplit(") ", 1)[1][0]
    except OSError:
        return ""
    return states


@contextmanager
def stalled_userdata(sandbox: Path) -> Iterator[Mount]:
    """`mount(user)` puts the staller over the user's ~/.t3/userdata and returns (the
    ready file, the server); every server is killed and unmounted afterwards."""
    need(IS_ROOT, "needs root to mount FUSE and run workers as real users")
    need(os.path.exists("/dev/fuse"), "needs /dev/fuse (the fuse kernel module)")
    need(shutil.which("fusermount3") is not None, "needs fusermount3 (Debian package fuse3)")
    have_pyfuse3 = subprocess.run([SYSTEM_PYTHON, "-c", "import pyfuse3"], capture_output=True)
    need(have_pyfuse3.returncode == 0, "needs Debian package python3-pyfuse3")
    mounted: list[tuple[subprocess.Popen[bytes], Path]] = []

    def mount(user: User) -> tuple[Path, subprocess.Popen[bytes]]:
        mountpoint = Path(user.home) / ".t3" / "userdata"
        ready = sandbox / f"fuse-{user.name}.ready"
        server = subprocess.Popen(
            [SYSTEM_PYTHON, "-I", str(FUSE_STALLER), str(mountpoint), str(ready),
             str(user.uid), str(user.gid)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        mounted.append((server, mountpoint))
        wait_until(lambda: ready.exists() or server.poll() is not None, 30, "the FUSE mount")
        if server.poll() is not None:
            pytest.fail(f"FUSE staller failed: {server.stderr.read() if server.stderr else ''}")
        return ready, server

    try:
        yield mount
    finally:
        for server, mountpoint in mounted:
            server.kill()  # aborts the connection: every stalled request fails, waiters go
            server.wait(30)
            subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True)

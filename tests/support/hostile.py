"""A hostile user's tools, run as that user (`python -I tests/support/hostile.py MODE OUT`):
they watch /proc for the user's own t3backupd worker and attack it.

- `ptrace`: PTRACE_SEIZE + PTRACE_INTERRUPT each worker, never wait for it: the worker
  stops, and once killed stays a zombie only this tracer could reap.
- `thief`: pidfd_getfd the worker's stdout and stderr and hold them open for good.

Each worker attacked is one line `<pid> <result>` in OUT (`ok`, or the errno name).
Standard library only (ctypes): it runs with the system Python as the user.
"""

from __future__ import annotations

import ctypes
import errno
import os
import sys
import time

PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
SYS_PIDFD_GETFD = 438
WORKER_ARGUMENT = b"t3backupd.worker"

libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
libc.ptrace.restype = ctypes.c_long
libc.syscall.restype = ctypes.c_long


def my_workers() -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid != os.getuid():
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                arguments = handle.read().split(b"\0")
        except OSError:
            continue
        if WORKER_ARGUMENT in arguments:
            found.append(int(entry))
    return found


def seize(pid: int) -> str:
    if libc.ptrace(PTRACE_SEIZE, pid, None, None) != 0:
        return errno.errorcode.get(ctypes.get_errno(), "?")
    if libc.ptrace(PTRACE_INTERRUPT, pid, None, None) != 0:
        return errno.errorcode.get(ctypes.get_errno(), "?")
    return "ok"


held: list[int] = []


def steal(pid: int) -> str:
    try:
        pidfd = os.pidfd_open(pid)
    except OSError as error:
        return errno.errorcode.get(error.errno or 0, "?")
    try:
        for target in (1, 2):
            fd = libc.syscall(SYS_PIDFD_GETFD, pidfd, target, 0)
            if fd < 0:
                return errno.errorcode.get(ctypes.get_errno(), "?")
            held.append(fd)  # held open for as long as this process lives
    finally:
        os.close(pidfd)
    return "ok"


def main() -> None:
    mode, out = sys.argv[1], sys.argv[2]
    attack = seize if mode == "ptrace" else steal
    done: set[int] = set()
    with open(out, "a", buffering=1) as log:
        log.write("ready\n")
        while True:
            for pid in my_workers():
                if pid not in done:
                    done.add(pid)
                    log.write(f"{pid} {attack(pid)}\n")
            time.sleep(0.002)


if __name__ == "__main__":
    main()

"""`make test-systemd`: the .deb under a real systemd (PID 1) in a Debian 12 qemu guest.

Host side (stdlib only, as root): builds or reuses the guest image (cached under
/var/tmp/t3backupd-vm, keyed by a hash of what goes into it), picks KVM if it boots here
and TCG otherwise, and boots the same disk several times with a phase for
tests/vm/guest.sh: `main` (install on the fresh guest, every unit and daemon check),
then one boot per power cut (the guest says T3VM-CUT-NOW on the serial console at the cut
point and this SIGKILLs qemu: the guest's page cache is lost), then `final` (checks of
the last cut, package remove and purge). Prints every PASS/FAIL line; exits 1 if any
check failed or is missing, 2 if the VM could not be run.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("T3VM_CACHE", "/var/tmp/t3backupd-vm"))
# Power-cut points (see cut_at in guest.sh), in the order they are cut.
CUT_POINTS = ("copy", "published", "next-user", "carol-verify")
BOOT_MARK = "T3VM-BOOTED"
CUT_MARK = "T3VM-CUT-NOW"
# Per boot, generous for TCG on a shared 2-core machine.
PHASE_TIMEOUT = {"main": 1800.0, "cut": 900.0, "final": 900.0, "probe": 60.0}
KVM_PROBE_SECONDS = 40.0
# Checks every run must report (a missing one fails the run, as a FAIL would).
EXPECTED_MAIN_CHECKS = 26  # 19 unit/daemon checks + 7 [offsite] checks


def log(message: str) -> None:
    print(f"[vm] {message}", flush=True)


def image_key() -> str:
    digest = hashlib.sha256(b"debian-12-bookworm-amd64\n")
    for name in ("build-image.sh", "guest-boot.sh"):
        digest.update((HERE / name).read_bytes())
    return digest.hexdigest()[:16]


def ensure_image() -> tuple[Path, bool]:
    """The cached image directory, built first if missing. True if it was built now."""
    image = CACHE / f"image-{image_key()}"
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / "build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (image / "done").exists():
            return image, False
        for old in CACHE.glob("image-*"):
            shutil.rmtree(old, ignore_errors=True)
        log(f"building the guest image {image.name} (debootstrap; cached afterwards)")
        started = time.monotonic()
        subprocess.run(["bash", str(HERE / "build-image.sh"), str(image)], check=True)
        log(f"image built in {time.monotonic() - started:.0f} s")
        return image, True


class Boot:
    """One qemu run of the guest on `disk` with `phase` in the share."""

    def __init__(self, image: Path, disk: Path, io: Path, accel: str, name: str) -> None:
        self.image, self.disk, self.io, self.accel = image, disk, io, accel
        self.console = io.parent / f"console-{name}.log"

    def command(self, snapshot: bool = False) -> list[str]:
        accel = ["-accel", "kvm", "-cpu", "host"] if self.accel == "kvm" else [
            "-accel", "tcg,thread=multi", "-cpu", "max"]  # fmt: skip
        return [
            "qemu-system-x86_64", *accel, "-smp", "2", "-m", "2048",
            "-kernel", str(self.image / "vmlinuz"), "-initrd", str(self.image / "initrd.img"),
            "-append", "root=/dev/vda rw console=ttyS0 panic=-1 quiet loglevel=3",
            "-drive", f"file={self.disk},format=raw,if=virtio,cache=writeback",
            "-virtfs", f"local,path={self.io},mount_tag=io,security_model=passthrough,id=io",
            "-nic", "none", "-display", "none", "-monitor", "none", "-no-reboot",
            "-serial", f"file:{self.console}",
            *(["-snapshot"] if snapshot else []),
        ]  # fmt: skip

    def run(self, phase: str, timeout: float, cut: bool = False, snapshot: bool = False,
            boot_within: float | None = None) -> tuple[str, float]:  # fmt: skip
        """Boot, wait for poweroff (or the cut mark, then SIGKILL). Returns how it ended
        ("poweroff", "cut", "timeout", "no-boot") and the seconds taken."""
        (self.io / "phase").write_text(phase + "\n")
        self.console.write_bytes(b"")
        started = time.monotonic()
        process = subprocess.Popen(self.command(snapshot), stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
        ended = "timeout"
        try:
            while time.monotonic() - started < timeout:
                text = self.console.read_text(errors="replace")
                if process.poll() is not None:
                    # A guest that never reached userspace did not power off: qemu failed.
                    ended = "poweroff" if BOOT_MARK in text else "no-boot"
                    break
                late = boot_within is not None and time.monotonic() - started > boot_within
                if late and BOOT_MARK not in text:
                    ended = "no-boot"
                    break
                if cut and CUT_MARK in text:
                    os.kill(process.pid, signal.SIGKILL)  # the power cut
                    ended = "cut"
                    break
                if boot_within is not None and BOOT_MARK in text and phase == "probe":
                    ended = "poweroff"
                    break
                time.sleep(0.02)
        finally:
            if process.poll() is None:
                process.kill()
            process.wait()
            stderr = process.stderr.read().decode(errors="replace") if process.stderr else ""
        if ended != "poweroff" and ended != "cut" and stderr.strip():
            log(f"qemu: {stderr.strip()[-500:]}")
        return ended, time.monotonic() - started


def choose_accel(image: Path, disk: Path, io: Path) -> str:
    """KVM if a guest boots with it here (cached per host kernel and image), else TCG."""
    forced = os.environ.get("T3VM_ACCEL", "")
    if forced in ("kvm", "tcg"):
        return forced
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg"
    verdict = CACHE / f"accel-{os.uname().release}-{image.name}"
    if verdict.exists():
        return verdict.read_text().strip()
    log("probing KVM (a boot with -snapshot; TCG if it does not reach userspace)")
    ended, took = Boot(image, disk, io, "kvm", "probe").run(
        "probe", PHASE_TIMEOUT["probe"], snapshot=True, boot_within=KVM_PROBE_SECONDS
    )
    accel = "kvm" if ended == "poweroff" else "tcg"
    (io / "results.txt").unlink(missing_ok=True)
    log(f"KVM probe: {ended} after {took:.0f} s -> {accel}")
    verdict.write_text(accel + "\n")
    return accel


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deb", required=True, type=Path)
    parser.add_argument("--cuts", type=int, default=len(CUT_POINTS))
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("test-systemd: needs root (debootstrap, 9p passthrough)", file=sys.stderr)
        return 2
    for tool in ("qemu-system-x86_64", "debootstrap", "mke2fs"):
        if shutil.which(tool) is None:
            print(f"test-systemd: {tool} is missing (make apt-vm)", file=sys.stderr)
            return 2
    clock = time.monotonic()
    image, built = ensure_image()
    run_dir = CACHE / f"run-{os.getpid()}"
    shutil.rmtree(run_dir, ignore_errors=True)
    io = run_dir / "io"
    io.mkdir(parents=True)
    try:
        disk = run_dir / "disk.ext4"
        subprocess.run(["cp", "--sparse=always", str(image / "rootfs.ext4"), str(disk)], check=True)
        shutil.copy(args.deb, io / args.deb.name)
        shutil.copy(HERE / "guest.sh", io / "guest.sh")
        # The guest's sample databases come from the dev tools (stdlib only, not packaged).
        devtools = HERE.parent / "devtools" / "t3backupd_dev"
        ignore = shutil.ignore_patterns("__pycache__")
        shutil.copytree(devtools, io / "devtools" / "t3backupd_dev", ignore=ignore)
        accel = choose_accel(image, disk, io)
        log(f"accelerator: {accel}; image {'built' if built else 'cached'}")
        boots: list[tuple[str, str, float]] = []

        def boot(name: str, phase: str, kind: str, cut: bool = False) -> str:
            ended, took = Boot(image, disk, io, accel, name).run(phase, PHASE_TIMEOUT[kind], cut)
            boots.append((name, ended, took))
            log(f"boot {name}: {ended} after {took:.0f} s")
            return ended

        problems: list[str] = []
        if boot("main", "main", "main") != "poweroff":
            problems.append("main boot did not power off by itself")
        cuts = CUT_POINTS[: max(0, min(args.cuts, len(CUT_POINTS)))]
        for number, point in enumerate(cuts, start=1):
            if boot(f"cut{number}", f"cut {point} {number}", "cut", cut=True) != "cut":
                problems.append(f"power cut {number} ({point}) did not happen")
        if boot("final", f"final - {len(cuts)}", "final") != "poweroff":
            problems.append("final boot did not power off by itself")

        results = (io / "results.txt").read_text() if (io / "results.txt").exists() else ""
        print("---- guest checks ----")
        for line in results.splitlines():
            if line.startswith(("PASS", "FAIL", "NOTE")):
                print(line)
        passed = [line for line in results.splitlines() if line.startswith("PASS")]
        failed = [line for line in results.splitlines() if line.startswith("FAIL")]
        main_checks = results.split("BOOT phase=cut")[0]
        if main_checks.count("\nPASS") + main_checks.count("\nFAIL") < EXPECTED_MAIN_CHECKS:
            problems.append("main phase reported fewer checks than expected (see console-main.log)")
        for number, point in enumerate(cuts, start=1):
            for what in ("every snapshot verifies", "next pass succeeds"):
                if not any(f"power cut {number} ({point}): {what}" in line for line in passed):
                    problems.append(f"power cut {number} ({point}): no PASS for '{what}'")
        for phase in ("main", "final"):
            if f"DONE phase={phase}" not in results:
                problems.append(f"phase {phase} did not finish")
        total = time.monotonic() - clock
        print("---- timings ----")
        for name, ended, took in boots:
            print(f"boot {name}: {took:.0f} s ({ended})")
        print(f"total {total:.0f} s ({'cold: image built' if built else 'warm: image cached'}, "
              f"{accel})")  # fmt: skip
        for problem in problems:
            print(f"FAIL {problem}")
        print(f"{len(passed)} passed, {len(failed) + len(problems)} failed")
        if failed or problems:
            for name, _, _ in boots:
                console = run_dir / f"console-{name}.log"
                if console.exists():
                    keep = CACHE / f"last-{console.name}"
                    shutil.copy(console, keep)
            log(f"consoles kept in {CACHE}/last-console-*.log")
            return 1
        return 0
    finally:
        if os.environ.get("T3VM_KEEP") != "1":
            shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

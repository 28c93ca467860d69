"""The restic engine (restic 0.14's CLI, `--json` where it has it).

restic runs as root with a minimal environment: the repository password through
`--password-file` (a root-only file; the path is in argv, never the password), the
back-end credentials from the root-only `environment_file` in its environment (which
only root can read in /proc), `TZ=UTC` so `--time` means UTC. No worker ever sees any
of it. Every command has a deadline and runs in its own process group, ended as a
group.

One restic snapshot per t3backupd snapshot: path `/<user>.sqlite` (one constant path
per user), `--host` this machine, `--time` the snapshot's time, tags `t3backupd`,
`user=U`, `name=NAME`, `sha256=HEX`, `size=N` and `label=L` for labelled ones.
"""

from __future__ import annotations

import json
import os
import re
import signal
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from t3backupd.core.offsite_config import OffsiteConfig, SecretFileError, read_secret_file
from t3backupd.root.offsite.cli_engine import CommandEngine
from t3backupd.root.offsite.engine import (
    OffsiteError,
    OffsiteSnapshot,
    SnapshotMeta,
    UploadResult,
    recorded_meta,
)
from t3backupd.root.offsite.process import ERROR_TAIL_BYTES

MARKER_TAG = "t3backupd"
_USER_TAG = re.compile(r"user=(.+)")
_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    # First: restic says "unable to create lock" for it too, which is no stale lock.
    ("read_only", re.compile(r"read-only file system", re.I)),
    ("auth", re.compile(r"wrong password|no key found", re.I)),
    ("locked", re.compile(r"already locked|unable to create lock", re.I)),
    ("no_space", re.compile(r"no space left|quota exceeded|disk quota|EntityTooLarge", re.I)),
    (
        "auth",
        re.compile(
            r"access denied|accessdenied|invalidaccesskeyid|signaturedoesnotmatch|"
            r"permission denied|forbidden|status code 403|status code 401|unauthori[sz]ed",
            re.I,
        ),
    ),
    (
        "unreachable",
        re.compile(
            r"connection refused|no such host|dial tcp|i/o timeout|network is unreachable|"
            r"connection reset|unable to start the sftp session|EOF|host is down|"
            r"no route to host|ssh:",
            re.I,
        ),
    ),
    (
        "no_repository",
        re.compile(
            r"unable to open config file|is there a repository|nosuchbucket|"
            r"bucket does not exist",
            re.I,
        ),
    ),
)


def classify(stderr: str) -> str:
    """The failure reason for restic's error output."""
    for reason, pattern in _PATTERNS:
        if pattern.search(stderr):
            return reason
    return "failed"


def redact(repository: str) -> str:
    """The repository as shown in messages: without a password in a URL."""
    scheme, sep, rest = repository.partition(":")
    if sep and scheme in ("rest", "s3", "swift") and "://" in rest:
        parts = urlsplit(rest)
        if parts.password is not None:
            host = parts.hostname or ""
            netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
            return f"{scheme}:{urlunsplit(parts._replace(netloc=netloc))}"
    return repository


def _error_line(stderr: bytes, repository: str, shown: str) -> str:
    text = stderr[-ERROR_TAIL_BYTES:].decode("utf-8", "replace")
    if repository:
        text = text.replace(repository, shown)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    fatal = [line for line in lines if line.startswith("Fatal:")]
    # restic 0.14 ends a failed lock with "unable to create lock in backend", after a Go
    # stack trace; the line that says why comes before it.
    read_only = [line for line in lines if "read-only file system" in line.lower()]
    line = fatal[-1] if fatal else read_only[-1] if read_only else (
        lines[-1] if lines else "no error output")  # fmt: skip
    line = line.removeprefix("Fatal: ")
    return "".join(ch if ch.isprintable() else "?" for ch in line)[:240]


def local_path(repository: str) -> str | None:
    """The directory of a local-path repository (`/path` or `local:/path`), else None."""
    path = repository.removeprefix("local:")
    return path if path.startswith("/") else None


class ResticEngine(CommandEngine):
    """restic on one repository (see the module docstring)."""

    name = "restic"
    # SIGINT: restic stops without saving a snapshot and removes its lock.
    stop_signal = signal.SIGINT

    def __init__(self, config: OffsiteConfig, tracker: Any = None) -> None:
        super().__init__(config, tracker)
        self._url = config.repository  # from repository_file: read at first use, by root

    def _location(self) -> str:
        # With repository_file the URL is a secret: messages name the file, never the URL.
        if self.config.repository:
            return redact(self.config.repository)
        return f"the repository in {self.config.repository_file}"

    def _engine_environment(self, env: dict[str, str]) -> None:
        # An environment file's HOME wins (as it did when it was read after this).
        env.setdefault("HOME", os.environ.get("HOME", "/root") if os.geteuid() != 0 else "/root")
        # The repository through the environment, never argv: a REST URL carries its
        # password, and any local user can read a process's /proc/PID/cmdline (its
        # environ is root's alone). Set last: it wins over an environment_file's.
        env["RESTIC_REPOSITORY"] = self._repository()

    def _repository(self) -> str:
        """The repository URL: `repository`, or the first line of the root-only
        `repository_file`, read here, at use (so a command that never runs restic never
        opens it). Raises OffsiteError naming the file, never its content."""
        if not self._url:
            path = self.config.repository_file
            try:
                lines = read_secret_file(path, self._owner).decode("utf-8").splitlines()
            except (SecretFileError, UnicodeDecodeError) as error:
                raise OffsiteError("auth", f"offsite.repository_file {path}: {error}") from None
            self._url = lines[0].strip() if lines else ""
            if not self._url:
                raise OffsiteError("auth", f"offsite.repository_file {path}: is empty")
        return self._url

    def _arguments(self, command: Sequence[str]) -> list[str]:
        argv = ["--password-file", self.config.password_file, "--cache-dir", self.config.cache_dir]
        if self.config.limit_upload_kib:
            argv += ["--limit-upload", str(self.config.limit_upload_kib)]
        for option in self.config.options:
            argv += ["--option", option]
        return argv + list(command)

    def _local_path(self) -> str | None:
        return local_path(self._url)

    def _explain(self, stderr: bytes) -> tuple[str, str]:
        line = _error_line(stderr, self._url, self.location)
        return classify(stderr.decode("utf-8", "replace")), line

    def _create(self) -> bool:
        try:
            self._run(["cat", "config"], "cat config", timeout=120)
            return False
        except OffsiteError as error:
            if error.reason != "no_repository":
                raise
        self._run(["init", "--repository-version", "2"])
        return True

    def _list_command(self, user: str | None) -> list[str]:
        command = ["snapshots", "--json", "--host", self.host, "--tag", MARKER_TAG]
        return command + ([] if user is None else ["--tag", f"user={user}"])

    def _listed(self, listing: object) -> list[OffsiteSnapshot]:
        items = listing if isinstance(listing, list) else []
        return [s for s in map(_parse_snapshot, items) if s is not None]

    def _upload_command(self, meta: SnapshotMeta) -> tuple[list[str], str]:
        when = datetime.fromtimestamp(meta.time, UTC).strftime("%Y-%m-%d %H:%M:%S")
        command = [
            "backup",
            "--stdin",
            "--stdin-filename",
            f"{meta.user}.sqlite",
            "--host",
            self.host,
            "--time",
            when,
            "--compression",
            self.config.compression,
            "--json",
            "--quiet",
        ]
        for tag in _tags(meta):
            command += ["--tag", tag]
        return command, ""  # restic names the snapshot when it is saved

    def _upload_result(self, stdout: bytes, expected_id: str) -> UploadResult:
        for line in reversed(stdout.splitlines()):
            try:
                summary = json.loads(line)
            except ValueError:
                continue
            if isinstance(summary, dict) and summary.get("message_type") == "summary":
                snapshot_id = summary.get("snapshot_id")
                added = summary.get("data_added")
                if isinstance(snapshot_id, str) and isinstance(added, int):
                    return UploadResult(snapshot_id, max(0, added))
        raise OffsiteError("failed", f"restic backup on {self.location}: no summary in its output")

    def _download_command(self, snapshot: OffsiteSnapshot) -> list[str]:
        return ["dump", snapshot.id, f"/{snapshot.meta.user}.sqlite"]

    def _forget_command(self, ids: Sequence[str]) -> list[str]:
        return ["forget", *ids]

    def _prune_command(self) -> list[str]:
        return ["prune"]

    def _check_commands(self, read_data_subset: str) -> list[list[str]]:
        subset = ["--read-data-subset", read_data_subset] if read_data_subset else []
        return [["check", *subset]]

    def _unlock_command(self) -> list[str] | None:
        return ["unlock"]  # restic removes only the locks of processes that are gone


def _tags(meta: SnapshotMeta) -> list[str]:
    tags = [
        MARKER_TAG,
        f"user={meta.user}",
        f"name={meta.name}",
        f"sha256={meta.sha256}",
        f"size={meta.size}",
    ]
    if meta.label is not None:
        tags.append(f"label={meta.label}")
    return tags + meta.words()


def _parse_snapshot(item: object) -> OffsiteSnapshot | None:
    """One entry of `restic snapshots --json`, or None if it is not a valid copy of ours."""
    if not isinstance(item, dict):
        return None
    snapshot_id, host, tags = item.get("id"), item.get("hostname"), item.get("tags")
    if not isinstance(snapshot_id, str) or not isinstance(tags, list):
        return None
    values: dict[str, str] = {}
    for tag in tags:
        if isinstance(tag, str) and "=" in tag:
            key, _, value = tag.partition("=")
            values.setdefault(key, value)
    user, name = values.get("user"), values.get("name")
    if user is None or name is None or "sha256" not in values:
        return None
    meta = recorded_meta(user, name, values, values.get("label"))
    if meta is None or item.get("paths") != [f"/{user}.sqlite"]:
        return None
    return OffsiteSnapshot(snapshot_id, meta, host if isinstance(host, str) else "")

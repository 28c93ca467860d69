"""Sealed offsite copies: what root uploaded, authenticated so a lying repository host
cannot make a restore deliver other bytes.

The size and sha256 a restore checks a stream against are recorded in the repository
itself (restic tags, the borg archive comment), and whoever can write to the repository
can write those too. So each copy also carries a seal: an HMAC-SHA256 over its record
(host, user, snapshot name, size, sha256, schema version) under a key derived from the
repository's password file. Only root on the source host reads that file, and a rebuild
from nothing needs it anyway, so a rebuilt host can still check every genuine copy. The
record names the user and host: a copy renamed into another user, a digest rewritten to
match other bytes, or an archive added by hand does not verify.

A copy's trust:
- "sealed": its seal verifies;
- "legacy": it has no seal and is older than the user's oldest sealed copy (uploaded
  before sealing began): restored with a one-line warning;
- "forged": a seal that does not verify, or no seal on a copy newer than a sealed one
  (a copy made after sealing began always has one): never restored, listed as
  untrusted, and counted by `offsite check` (reason `untrusted`).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Sequence
from dataclasses import replace

from t3backupd.core.offsite_config import OffsiteConfig, SecretFileError, read_secret_file
from t3backupd.root.offsite.engine import Engine, OffsiteError, OffsiteSnapshot, SnapshotMeta

SEAL_VERSION = "v1"
_KEY_CONTEXT = b"t3backupd offsite seal key " + SEAL_VERSION.encode()


def seal_key(config: OffsiteConfig, owner: int) -> bytes:
    """The sealing key: derived from the password file (root's own file, checked like
    every secret; its trailing newline does not count, as for restic and borg)."""
    try:
        password = read_secret_file(config.password_file, owner).rstrip(b"\r\n")
    except SecretFileError as error:
        problem = f"offsite.password_file {config.password_file}: {error}"
        raise OffsiteError("auth", problem) from None
    return hmac.new(password, _KEY_CONTEXT, hashlib.sha256).digest()


def engine_key(engine: Engine) -> bytes:
    """The sealing key of `engine`'s repository (its password file, as root reads it)."""
    return seal_key(engine.config, 0 if os.geteuid() == 0 else os.geteuid())


def judged(engine: Engine, user: str | None = None) -> list[OffsiteSnapshot]:
    """`engine.snapshots(user)`, each copy's trust set. Raises OffsiteError."""
    return judge(engine_key(engine), engine.snapshots(user))


def _record(host: str, meta: SnapshotMeta) -> bytes:
    schema = "" if meta.schema_version is None else str(meta.schema_version)
    fields = (SEAL_VERSION, host, meta.user, meta.name, str(meta.size), meta.sha256, schema)
    return "\n".join(fields).encode()


def seal_of(key: bytes, host: str, meta: SnapshotMeta) -> str:
    """The seal recorded with a copy of `meta` uploaded by `host`."""
    return hmac.new(key, _record(host, meta), hashlib.sha256).hexdigest()


def sealed(key: bytes, host: str, meta: SnapshotMeta) -> SnapshotMeta:
    """`meta` with its seal, ready to upload."""
    return replace(meta, seal=seal_of(key, host, meta))


def judge(key: bytes, copies: Sequence[OffsiteSnapshot]) -> list[OffsiteSnapshot]:
    """`copies` with each one's trust set (see the module's docstring)."""
    checked = [
        replace(copy, trust="sealed" if _verifies(key, copy) else "forged")
        if copy.meta.seal
        else copy
        for copy in copies
    ]
    oldest_sealed: dict[str, float] = {}
    for copy in checked:
        if copy.trust == "sealed":
            user = copy.meta.user
            oldest_sealed[user] = min(oldest_sealed.get(user, copy.meta.time), copy.meta.time)
    return [
        copy
        if copy.meta.seal
        else replace(
            copy,
            trust="legacy"
            if copy.meta.time < oldest_sealed.get(copy.meta.user, float("inf"))
            else "forged",
        )
        for copy in checked
    ]


def _verifies(key: bytes, copy: OffsiteSnapshot) -> bool:
    return hmac.compare_digest(copy.meta.seal, seal_of(key, copy.host, copy.meta))


def usable(copies: Sequence[OffsiteSnapshot]) -> list[OffsiteSnapshot]:
    """The judged copies a restore may use (sealed, or legacy with a warning)."""
    return [copy for copy in copies if copy.trust in ("sealed", "legacy")]

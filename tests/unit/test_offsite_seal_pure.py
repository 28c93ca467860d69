"""offsite/seal.py, pure: which copies a restore may trust (issue 24)."""

from __future__ import annotations

from dataclasses import replace

from t3backupd.root.offsite.engine import OffsiteSnapshot, SnapshotMeta
from t3backupd.root.offsite.seal import judge, seal_of, sealed, usable

KEY = b"k" * 32
HOST = "h1"


def copy(name: str, when: float, user: str = "alice", seal: bool = True) -> OffsiteSnapshot:
    meta = SnapshotMeta(user, name, when, 4096, "a" * 64, schema_version=26)
    return OffsiteSnapshot(name, sealed(KEY, HOST, meta) if seal else meta, HOST)


OLD = copy("state-20260101T000000Z.sqlite", 1767225600.0, seal=False)
NEW = copy("state-20260201T000000Z.sqlite", 1769904000.0)


def trust(copies: list[OffsiteSnapshot]) -> dict[str, str]:
    return {c.meta.name: c.trust for c in judge(KEY, copies)}


def test_a_genuine_seal_verifies_and_an_older_unsealed_copy_is_legacy() -> None:
    assert trust([OLD, NEW]) == {OLD.meta.name: "legacy", NEW.meta.name: "sealed"}
    assert usable(judge(KEY, [OLD, NEW])) == judge(KEY, [OLD, NEW])


def test_every_field_of_the_record_is_covered_by_the_seal() -> None:
    for change in (
        {"user": "bob"},
        {"name": "state-20260201T000001Z.sqlite"},
        {"size": 4097},
        {"sha256": "b" * 64},
        {"schema_version": 25},
    ):
        forged = replace(NEW, meta=replace(NEW.meta, **change))  # type: ignore[arg-type]
        assert trust([forged]) == {forged.meta.name: "forged"}, change
    assert trust([replace(NEW, host="h2")]) == {NEW.meta.name: "forged"}
    assert seal_of(b"other key" * 4, HOST, NEW.meta) != NEW.meta.seal


def test_an_unsealed_copy_newer_than_a_sealed_one_is_forged() -> None:
    planted = copy("state-20991231T000000Z.sqlite", 4102358400.0, seal=False)
    assert trust([OLD, NEW, planted])[planted.meta.name] == "forged"
    assert planted not in usable(judge(KEY, [OLD, NEW, planted]))
    # Another user's sealed copies do not make this user's old copies legacy or forged.
    bobs = copy("state-20250101T000000Z.sqlite", 1735689600.0, user="bob", seal=False)
    assert trust([NEW, bobs])[bobs.meta.name] == "legacy"

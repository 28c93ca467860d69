"""Deterministic pseudo-content (prose, ids, timestamps, JSON) for generated rows."""

from __future__ import annotations

import json
import random
import time

# fmt: off
_TECH_WORDS: tuple[str, ...] = (
    "function", "return", "const", "let", "await", "async", "import", "export", "=>",
    "{", "}", "(", ")", "[]", "null", "undefined", "true", "false", "src/", "apps/server",
    "packages/contracts", ".ts", ".tsx", "bun", "pnpm", "npm", "test", "error:", "warning:",
    "TypeError", "Effect.gen", "yield*", "Schema", "Layer", "SqlClient", "git", "diff",
    "commit", "branch", "worktree", "thread", "turn", "session", "provider", "codex",
    "approval", "checkpoint", "projection", "sqlite", "WAL", "✓", "→", "naïve", "café",
    "—", "…", "`", "```", "```ts", "\n", "\n", "\n", "\n\n", "- ", "* ", "1.", "##",
)
# fmt: on
MODELS = ("gpt-5-codex", "gpt-5", "claude-sonnet-4-5", "claude-opus-4-1", "o3")
ACTIVITY_KINDS = (
    ("tool", "tool.started", "Running command"),
    ("tool", "tool.completed", "Command finished"),
    ("info", "file.read", "Read file"),
    ("info", "file.edited", "Edited file"),
    ("info", "web.search", "Searched the web"),
    ("error", "tool.failed", "Command failed"),
    ("approval", "approval.requested", "Approval requested"),
    ("info", "reasoning", "Thinking"),
)


class Corpus:
    """Pseudo-prose that message bodies are cut from.

    Its only character that JSON escapes is the newline (the vocabulary has no
    quotes, backslashes or other control characters), so a cut's JSON string body
    is ``raw.replace("\\n", "\\\\n")``: payloads are assembled without re-encoding
    the text, which is most of their bytes (and otherwise most of populate's time).
    """

    def __init__(self, rng: random.Random, tokens: int) -> None:
        letters = "abcdefghijklmnopqrstuvwxyz"
        vocab = ["".join(rng.choices(letters, k=rng.randint(1, 10))) for _ in range(3000)]
        vocab.extend(_TECH_WORDS * 8)
        self.raw = " ".join(rng.choices(vocab, k=tokens))
        if dumps(self.raw)[1:-1] != escape(self.raw):  # a vocabulary edit broke the trick
            raise RuntimeError("sample corpus has characters that need JSON escaping")

    def cut(self, rng: random.Random, length: int) -> tuple[str, str]:
        """``length`` characters of text: ``(raw, JSON-escaped raw)``."""
        length = min(length, len(self.raw) // 2)
        start = int(rng.random() * (len(self.raw) - length))
        raw = self.raw[start : start + length]
        return raw, escape(raw)

    def words(self, rng: random.Random, length: int) -> str:
        """A short raw snippet (titles, file names)."""
        return self.cut(rng, length)[0].replace("\n", " ").strip()


def escape(corpus_text: str) -> str:
    return corpus_text.replace("\n", "\\n")


def with_json(obj_json: str, key: str, value_json: str) -> str:
    """Append ``"key": value`` (value already JSON) to a non-empty JSON object's text."""
    return f'{obj_json[:-1]},"{key}":{value_json}}}'


def skewed_size(rng: random.Random, lo: int, hi: int) -> int:
    """Sizes from lo to hi, log-scaled and squeezed toward lo (like chat messages).

    The median is lo * (hi / lo) ** 0.25: about 3.2 x lo when hi = 100 x lo.
    """
    u = rng.random()
    return int(lo * (hi / lo) ** (u * u))


def random_uuid(rng: random.Random) -> str:
    """A random (version 4 shaped) UUID string drawn from ``rng``."""
    h = f"{rng.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"


def iso_time(ms: int) -> str:
    secs, millis = divmod(ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{millis:03d}Z"


def dumps(obj: object) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))

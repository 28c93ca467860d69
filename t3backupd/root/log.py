"""Logging: structlog for our events, stdlib logging (APScheduler's) through the same
renderer, JSON when not on a TTY (journald, CI) and console on a TTY.

When the stream is systemd's journal stream (`JOURNAL_STREAM` names its device:inode),
every line starts with its syslog priority, `<3>` for error, `<4>` warning, `<6>` info,
`<7>` debug: journald strips the prefix and stores PRIORITY=, so `journalctl -p err` works.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import Any, TextIO

import structlog

# "off": no event at all (a CLI command on a terminal prints its human result only).
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR, "off": logging.CRITICAL + 10}  # fmt: skip
# sd-daemon(3) prefixes: syslog priorities of the stdlib levels.
_PRIORITIES = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
               logging.CRITICAL: 2}  # fmt: skip


def is_journal_stream(stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    """True if `stream` is the journal stream systemd connected (JOURNAL_STREAM=dev:ino
    matches the stream's file). False for anything else: a pipe, a file, a TTY, a
    JOURNAL_STREAM inherited by a process whose stderr was redirected elsewhere."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        info = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (info.st_dev, info.st_ino) == (int(device), int(inode))


def syslog_priority(levelno: int) -> int:
    """The syslog priority (0-7) of a stdlib level number."""
    for level in (logging.CRITICAL, logging.ERROR, logging.WARNING, logging.INFO):
        if levelno >= level:
            return _PRIORITIES[level]
    return _PRIORITIES[logging.DEBUG]


class _PriorityFormatter(structlog.stdlib.ProcessorFormatter):
    """Prefixes every line of a record with `<N>`, its syslog priority (journald's way)."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).split("\n"))


def configure_logging(fmt: str = "auto", level: str = "info", stream: TextIO | None = None) -> None:
    """Route structlog and stdlib logging to `stream` (default stderr) in one format.

    `fmt`: "json", "console", or "auto" (console when `stream` is a TTY).
    """
    stream = sys.stderr if stream is None else stream
    use_console = fmt == "console" or (fmt == "auto" and stream.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=False)
        if use_console
        else structlog.processors.JSONRenderer()
    )
    formatter_class = (
        _PriorityFormatter if is_journal_stream(stream) else structlog.stdlib.ProcessorFormatter
    )
    formatter = formatter_class(
        foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS.get(level, logging.INFO))
    # APScheduler logs every job execution at INFO; keep its warnings and errors.
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )


def get_logger(name: str = "t3backupd") -> Any:
    return structlog.stdlib.get_logger(name)

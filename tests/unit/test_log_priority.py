"""Syslog priority prefixes on the journal stream (root/log.py), on real files."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from t3backupd.root.log import configure_logging, get_logger, is_journal_stream, syslog_priority


def stamp(path: Path) -> str:
    info = os.stat(path)
    return f"{info.st_dev}:{info.st_ino}"


def test_priorities_of_levels() -> None:
    assert [syslog_priority(level) for level in (10, 20, 30, 40, 50)] == [7, 6, 4, 3, 2]
    assert syslog_priority(logging.INFO + 5) == 6


def test_journal_stream_is_recognised_only_by_its_device_and_inode(tmp_path: Path) -> None:
    journal, other = tmp_path / "journal", tmp_path / "other"
    journal.write_text("")
    other.write_text("")
    with journal.open("a") as stream:
        assert is_journal_stream(stream, {"JOURNAL_STREAM": stamp(journal)})
        assert not is_journal_stream(stream, {"JOURNAL_STREAM": stamp(other)})
        assert not is_journal_stream(stream, {})
        assert not is_journal_stream(stream, {"JOURNAL_STREAM": "garbage"})


def test_every_line_carries_its_priority_on_the_journal_stream(tmp_path: Path) -> None:
    journal = tmp_path / "journal"
    journal.write_text("")
    os.environ["JOURNAL_STREAM"] = stamp(journal)
    try:
        with journal.open("a") as stream:
            configure_logging("json", "debug", stream)
            log = get_logger()
            log.debug("d")
            log.info("i")
            log.warning("w")
            log.error("e")
            logging.getLogger("apscheduler").error("from stdlib")
    finally:
        del os.environ["JOURNAL_STREAM"]
        configure_logging("json", "info")
    lines = journal.read_text().splitlines()
    assert [line[:3] for line in lines] == ["<7>", "<6>", "<4>", "<3>", "<3>"]
    assert all(line[3] == "{" for line in lines)


def test_no_prefix_elsewhere(tmp_path: Path) -> None:
    path = tmp_path / "plain"
    with path.open("a") as stream:
        configure_logging("json", "info", stream)
        get_logger().error("e")
    configure_logging("json", "info")
    assert path.read_text().startswith("{")

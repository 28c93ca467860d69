"""The man page t3backupd(8) is generated from the argparse definitions: the checked-in
`docs/t3backupd.8` must be exactly what `make man` writes now, and name every command
and option, so it cannot drift from the CLI."""

from __future__ import annotations

import argparse
from pathlib import Path

from t3backupd.root.cli import DOCS, SUBCOMMAND_DOCS, build_parser
from t3backupd.root.manpage import render

PAGE = Path(__file__).resolve().parents[2] / "docs" / "t3backupd.8"


def roff(text: str) -> str:
    return text.replace("-", "\\-")


def test_the_checked_in_man_page_is_what_make_man_generates() -> None:
    assert PAGE.read_text(encoding="utf-8") == render(), "stale man page: run `make man`"


def test_the_man_page_names_every_command_option_and_exit_status() -> None:
    page = render()
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(subparsers.choices) == set(DOCS)
    for name, sub in [("", parser), *subparsers.choices.items()]:
        if name:
            assert f".SS {roff(name)}\n" in page, name
            for line in DOCS[name].exits:
                assert roff(line.split("  ", 1)[1]) in page.replace("\n", " "), line
        for action in sub._actions:
            for option in action.option_strings:
                if option not in ("-h", "--help", "--version"):
                    assert f"\\fB{roff(option)}\\fR" in page, f"{name} {option}"
    for variable in ("T3BACKUPD_CONFIG", "T3_BACKUP_DEST", "T3_BACKUP_KEEP", "T3_BACKUP_TIMEOUT"):
        assert f"\\fB{variable}\\fR" in page
    assert "`" not in page


def test_the_offsite_subcommands_have_their_own_sections_options_and_help() -> None:
    page = render()
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    offsite = subparsers.choices["offsite"]
    nested = next(a for a in offsite._actions if isinstance(a, argparse._SubParsersAction))
    assert set(nested.choices) == set(SUBCOMMAND_DOCS["offsite"]) == {"init", "sync", "check"}
    for name, sub in nested.choices.items():
        section = page.split(f".SS offsite {name}\n", 1)[1].split(".SS ", 1)[0]
        for line in SUBCOMMAND_DOCS["offsite"][name].exits:
            assert roff(line.split("  ", 1)[1]) in section.replace("\n", " "), line
        if name != "init":
            assert "\\fB\\-\\-user\\fR" in section, name
        help_text = sub.format_help()
        assert "exit status:" in help_text and "global options" in help_text, name
        assert help_text.count("\n  2  ") == 1, help_text


def test_every_command_help_lists_exit_2_once() -> None:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subparsers.choices.items():
        assert sub.format_help().count("\n  2  ") == 1, name


def test_a_new_option_makes_the_checked_in_page_stale() -> None:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    subparsers.choices["list"].add_argument("--newest", action="store_true", help="only one")
    assert "\\fB\\-\\-newest\\fR" in render(parser)
    assert render(parser) != PAGE.read_text(encoding="utf-8")


def test_the_reference_command_table_and_the_docs_cover_every_command() -> None:
    # The full two-way check (options, exit codes) is tests/unit/test_docs_contract.py.
    root = PAGE.parents[1]
    reference = (root / "docs" / "reference.md").read_text(encoding="utf-8")
    operations = (root / "docs" / "operations.md").read_text(encoding="utf-8")
    for name in DOCS:
        assert f"| `{name}" in reference, f"the reference's command table lacks {name}"
    assert "systemd-analyze security --offline=true packaging/systemd/t3backupd.service" in (
        operations
    )
    assert "## Uninstall" in operations
    assert "t3backupd adopt --user U" in operations and "exits 1 on these snapshots" in operations

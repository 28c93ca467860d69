"""The docs are the contract: every command, option, exit code, config key, environment
variable, metric and alert in the code is in docs/reference.md, and every one named
there is in the code. Each set is derived from the code itself (the argument parser, the
config parser's key tables, the metric collectors, the alert rules), never copied into
this file, so a name added on either side alone fails here with the name in the message.
"""

from __future__ import annotations

import argparse
import re
import tomllib
from collections.abc import Iterable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from t3backupd.core.config import SECTIONS, Config, all_keys
from t3backupd.core.offsite_config import OFFSITE_KEYS, OffsiteConfig
from t3backupd.root.cli import DOCS, ENVIRONMENT, build_parser
from t3backupd.root.metrics import Metrics
from t3backupd.root.offsite.metrics import OffsiteMetrics
from t3backupd.root.usage import DestinationCollector

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS_DIR = ROOT / "docs"
REFERENCE = DOCS_DIR / "reference.md"
ALERT_RULES = ROOT / "packaging" / "prometheus" / "t3backupd-alerts.yml"
EXAMPLE = ROOT / "config.example.toml"
README_MAX_BYTES = 12_000
HELP = frozenset({"-h", "--help"})
OPTION = re.compile(r"(?<![\w-])(--?[a-z][a-z-]*)")
CODE_SPAN = re.compile(r"`([^`]+)`")
WHERE = "docs/reference.md"
LINK = re.compile(r"\]\(([^)\s]+)\)")


# --- the comparison every check uses -----------------------------------------------------


def missing(kind: str, in_code: Iterable[str], in_docs: Iterable[str]) -> list[str]:
    """One line per name that one side has and the other lacks (empty: they agree)."""
    code, docs = set(in_code), set(in_docs)
    only_code = [f"{kind} {name}: in the code, not in {WHERE}" for name in sorted(code - docs)]
    only_docs = [f"{kind} {name}: in {WHERE}, not in the code" for name in sorted(docs - code)]
    return only_code + only_docs


# --- reading the reference ---------------------------------------------------------------


def section(text: str, heading: str) -> str:
    """The body of `## heading` (up to the next `## `)."""
    parts = re.split(r"^## ", text, flags=re.M)
    for part in parts[1:]:
        title, _, body = part.partition("\n")
        if title.strip() == heading:
            return body
    raise AssertionError(f"docs/reference.md has no section '## {heading}'")


def table_rows(body: str) -> list[list[str]]:
    """The cells of each row of the section's table, without its header and rule."""
    rows = [line for line in body.splitlines() if line.startswith("|")]
    cells = [[cell.strip() for cell in re.split(r"(?<!\\)\|", row)[1:-1]] for row in rows]
    return cells[2:]


def first_names(text: str, heading: str) -> list[str]:
    """The name in each row's first cell: its first code span, labels `{...}` dropped."""
    names = []
    for row in table_rows(section(text, heading)):
        span = CODE_SPAN.search(row[0])
        assert span is not None, f"'## {heading}': a row without a `name`: {row[0]!r}"
        names.append(span.group(1).split("{", 1)[0])
    return names


def documented_commands(text: str) -> dict[str, tuple[set[str], set[int]]]:
    """command -> (its options, its exit codes), from the rows of `## Commands`."""
    commands = {}
    for row in table_rows(section(text, "Commands")):
        name = CODE_SPAN.search(row[0])
        assert name is not None and len(row) == 4, f"bad command row: {row}"
        options = set(OPTION.findall(row[1]))
        exits = {int(code) for code in re.findall(r"`(\d+)`", row[3])}
        commands[name.group(1)] = (options, exits)
    return commands


# --- the code's side -----------------------------------------------------------------------


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings} - HELP


def global_options() -> set[str]:
    return _options(build_parser())


def code_commands() -> dict[str, tuple[set[str], set[int]]]:
    """command (nested ones as "offsite sync") -> (its own options, its exit codes)."""
    shared = global_options() - {"--version"}
    commands = {}
    for name, sub in _subparsers(build_parser()).items():
        exits = {int(line.split()[0]) for line in DOCS[name].exits}
        nested = _subparsers(sub)
        for full, parser in ({f"{name} {n}": p for n, p in nested.items()} or {name: sub}).items():
            commands[full] = (_options(parser) - shared, exits)
    return commands


def code_config_keys() -> list[str]:
    return all_keys() + [f"offsite.{key}" for key in OFFSITE_KEYS]


def code_environment() -> set[str]:
    overrides = {key.env for section in SECTIONS for key in section.keys if key.env}
    listed = set(re.findall(r"^\s+([A-Z][A-Z0-9_]+)\s", ENVIRONMENT, flags=re.M))
    assert overrides <= listed, "cli.ENVIRONMENT (the --help text) lacks an override"
    return listed


def code_metrics(tmp_path: Path) -> dict[str, str]:
    """Every family the daemon's registry serves: exposed name -> type."""
    registry = CollectorRegistry()
    Metrics(registry)
    DestinationCollector(registry, lambda: str(tmp_path))
    OffsiteMetrics(registry)
    return {
        family.name + ("_total" if family.type == "counter" else ""): family.type
        for family in registry.collect()
    }


def code_alerts() -> list[str]:
    return re.findall(r"^\s*- alert:\s*(\S+)", ALERT_RULES.read_text(encoding="utf-8"), re.M)


# --- the checks ------------------------------------------------------------------------------


def reference() -> str:
    return REFERENCE.read_text(encoding="utf-8")


def test_every_command_is_documented_once_with_its_options() -> None:
    code, docs = code_commands(), documented_commands(reference())
    assert len(table_rows(section(reference(), "Commands"))) == len(docs), "a command twice"
    problems = missing("command", code, docs)
    for name in sorted(set(code) & set(docs)):
        problems += missing(f"option of {name}:", code[name][0], docs[name][0])
    assert problems == []


def test_every_command_row_has_the_exit_codes_of_its_help() -> None:
    code, docs = code_commands(), documented_commands(reference())
    problems = []
    for name in sorted(set(code) & set(docs)):
        in_code, in_docs = map(str, code[name][1]), map(str, docs[name][1])
        problems += missing(f"exit code of {name}:", in_code, in_docs)
    assert problems == []


def test_the_global_options_and_the_environment_are_documented() -> None:
    text = reference()
    documented = {option for row in table_rows(section(text, "Global options"))
                  for option in OPTION.findall(row[0])}  # fmt: skip
    assert missing("global option", global_options(), documented) == []
    environment = first_names(text, "Environment")
    assert missing("environment variable", code_environment(), environment) == []


def test_every_config_key_is_in_the_reference_and_in_config_example_toml() -> None:
    assert missing("config key", code_config_keys(), first_names(reference(), "Config keys")) == []
    # The example's [offsite] section is commented out (absent = off): its keys are the
    # `# key = value` lines after `# [offsite]`.
    offsite = EXAMPLE.read_text(encoding="utf-8").split("\n# [offsite]\n", 1)[1]
    in_example = re.findall(r"^# ([a-z_]+) = ", offsite, flags=re.M)
    assert sorted(in_example) == sorted(OFFSITE_KEYS)


def code_default(key: str) -> object:
    # Config().offsite is None ([offsite] absent): its defaults are OffsiteConfig's.
    section, _, name = key.rpartition(".")
    value: object = OffsiteConfig() if section == "offsite" else Config(max_uid=0)
    for part in ([section] if section and section != "offsite" else []) + [name]:
        value = getattr(value, part)
    return list(value) if isinstance(value, tuple) else value


def test_every_documented_default_is_the_code_default() -> None:
    # Defaults that are not one TOML value: computed at run time, or required.
    not_literal = {"max_uid", "offsite.repository", "offsite.password_file"}
    rows = table_rows(section(reference(), "Config keys"))
    problems = []
    for key, row in zip(first_names(reference(), "Config keys"), rows, strict=True):
        if key in not_literal:
            continue
        documented = tomllib.loads(f"value = {row[1].strip('`')}")["value"]
        if documented != code_default(key):
            problems.append(f"{key}: default {code_default(key)!r}, documented {row[1]}")
    assert problems == []


def test_every_metric_is_documented_with_its_type(tmp_path: Path) -> None:
    code = code_metrics(tmp_path)
    rows = table_rows(section(reference(), "Metrics"))
    names = first_names(reference(), "Metrics")
    docs = {name: row[1] for name, row in zip(names, rows, strict=True)}
    problems = missing("metric", code, docs)
    problems += [
        f"metric {name}: a {code[name]} in the code, a {docs[name]} in docs/reference.md"
        for name in sorted(set(code) & set(docs))
        if code[name] != docs[name]
    ]
    assert problems == []


def test_every_shipped_alert_is_documented() -> None:
    alerts = code_alerts()
    assert len(alerts) == len(set(alerts)) > 0
    assert missing("alert", alerts, first_names(reference(), "Alerts")) == []


def test_a_name_on_one_side_only_is_reported() -> None:
    text = reference()
    doctored = text.replace("| `T3BackupNoUsers` |", "| `T3BackupNobody` |")
    assert missing("alert", code_alerts(), first_names(doctored, "Alerts")) == [
        "alert T3BackupNoUsers: in the code, not in docs/reference.md",
        "alert T3BackupNobody: in docs/reference.md, not in the code",
    ]
    without_quick = text.replace("`--latest` `--quick` `--json`", "`--latest` `--json`")
    assert "--quick" not in documented_commands(without_quick)["verify"][0]
    assert "--quick" in code_commands()["verify"][0]
    without_row = re.sub(r"^\| `offsite\.host` .*\n", "", text, flags=re.M)
    assert missing("config key", code_config_keys(), first_names(without_row, "Config keys")) == [
        "config key offsite.host: in the code, not in docs/reference.md"
    ]


# --- the README and the links ---------------------------------------------------------------


def test_the_readme_fits_on_a_screen_or_two_and_keeps_its_promises() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.encode("utf-8")) <= README_MAX_BYTES
    for needed in ("make demo", "make test", "make deb", "make test-systemd", "LICENSE", "MIT",
                   "t3backupd-dev", "tests/stress/under-load.sh", "docs/reference.md",
                   "docs/security.md", "docs/operations.md", "docs/design.md"):  # fmt: skip
        assert needed in text, needed


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#+ (.+)$", markdown, flags=re.M)
    return {re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-") for title in headings}


def link_problems(path: Path) -> list[str]:
    """Links in one Markdown file that leave the repository or point at nothing."""
    problems = []
    text = path.read_text(encoding="utf-8")
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            problems.append(f"{path.name}: {target}: links outside the repository")
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            problems.append(f"{path.name}: {target}: no such file")
        elif anchor and anchor not in _anchors(linked.read_text(encoding="utf-8")):
            problems.append(f"{path.name}: {target}: no such heading")
    return problems


@pytest.mark.parametrize("name", ["README.md", *sorted(p.name for p in DOCS_DIR.glob("*.md"))])
def test_every_relative_link_points_at_an_existing_file_and_heading(name: str) -> None:
    path = README if name == "README.md" else DOCS_DIR / name
    assert link_problems(path) == []


def test_a_broken_link_is_reported(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# Top\n[a](page.md#top) [b](gone.md) [c](#nowhere) [d](https://x.example)\n")
    assert link_problems(page) == [
        "page.md: gone.md: no such file",
        "page.md: #nowhere: no such heading",
        "page.md: https://x.example: links outside the repository",
    ]


def test_the_code_layout_names_every_module() -> None:
    layout = section((DOCS_DIR / "design.md").read_text(encoding="utf-8"), "Code layout")
    package = ROOT / "t3backupd"
    modules = {p.stem for p in package.glob("*/**/*.py") if p.stem != "__init__"}
    named = set(CODE_SPAN.findall(layout))
    assert sorted(modules - named) == []

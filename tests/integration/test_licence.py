"""The licence (issue 21): MIT, said the same in LICENSE, pyproject.toml (and so the
installed package's metadata) and the Debian copyright file (DEP-5); the Debian Maintainer
comes from one place, DEBFULLNAME/DEBEMAIL at `make deb` time, with defaults naming the
project."""

from __future__ import annotations

import os
import shutil
import subprocess
import tomllib
from pathlib import Path

from support import need
from support.system import PYTHON

REPO = Path(__file__).resolve().parents[2]
DEBIAN = REPO / "packaging" / "debian"
DEFAULT_MAINTAINER = "t3backupd contributors <maintainers@t3backupd.example>"


def words(text: str) -> list[str]:
    """The words of a licence text, whatever its wrapping and DEP-5 continuation dots."""
    return [word for word in text.split() if word != "."]


def dep5_paragraphs(text: str) -> list[dict[str, str]]:
    """debian/copyright as deb822 paragraphs: field -> value (continuation lines joined)."""
    paragraphs: list[dict[str, str]] = []
    for block in text.strip().split("\n\n"):
        fields: dict[str, str] = {}
        key = ""
        for line in block.splitlines():
            if line.startswith((" ", "\t")):
                fields[key] += "\n" + line[1:]
            else:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        paragraphs.append(fields)
    return paragraphs


def test_license_file_is_mit_with_the_contributors_copyright() -> None:
    text = (REPO / "LICENSE").read_text()
    assert text.startswith("MIT License\n")
    assert "Copyright (c) 2026 t3backupd contributors" in text
    assert "Permission is hereby granted, free of charge" in text


def test_pyproject_and_the_installed_package_say_mit() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT"
    assert project["license-files"] == ["LICENSE"]
    script = (
        "import importlib.metadata as m; d = m.distribution('t3backupd'); "
        "print(d.metadata['License-Expression']); "
        "print(any(str(f).endswith('LICENSE') for f in d.files or []))"
    )
    result = subprocess.run([PYTHON, "-I", "-c", script], capture_output=True, text=True,
                            check=True, cwd="/")  # fmt: skip
    assert result.stdout.split() == ["MIT", "True"]


def test_debian_copyright_is_dep5_mit_with_the_license_files_text() -> None:
    paragraphs = dep5_paragraphs((DEBIAN / "copyright").read_text())
    header, files, licence = paragraphs
    assert header["Format"] == "https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/"
    assert header["Upstream-Name"] == "t3backupd"
    assert (files["Files"], files["Copyright"], files["License"]) == (
        "*",
        "2026 t3backupd contributors",
        "MIT",
    )
    name, _, body = licence["License"].partition("\n")
    assert name == "MIT"
    permission = (REPO / "LICENSE").read_text().split("\n\n", 2)[2]
    assert words(body) == words(permission)
    assert "not-yet-chosen" not in (DEBIAN / "copyright").read_text()


def make_deb_source(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> (
    subprocess.CompletedProcess[str]
):  # fmt: skip
    need(shutil.which("make") is not None, "needs make")
    need(shutil.which("dpkg-parsechangelog") is not None, "needs dpkg-parsechangelog (dpkg-dev)")
    environment = {k: v for k, v in os.environ.items() if not k.startswith("DEB")}
    environment.update(env or {})
    return subprocess.run(
        ["make", "-s", "-C", str(REPO), "deb-source", f"DEB_BUILD={tmp_path}", *args],
        capture_output=True, text=True, timeout=120, env=environment,
    )  # fmt: skip


def maintainers(tmp_path: Path) -> tuple[str, str]:
    """(control's Maintainer, the changelog signer) of the filled-in debian/."""
    control = (tmp_path / "src" / "debian" / "control").read_text()
    field = next(line for line in control.splitlines() if line.startswith("Maintainer:"))
    signer = subprocess.run(
        ["dpkg-parsechangelog", "-l", str(tmp_path / "src" / "debian" / "changelog"),
         "-S", "Maintainer"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    return field.removeprefix("Maintainer:").strip(), signer


def test_the_checked_in_debian_files_carry_only_the_placeholder() -> None:
    control = (DEBIAN / "control").read_text()
    assert "Maintainer: @DEB_MAINTAINER@\n" in control
    assert " -- @DEB_MAINTAINER@  " in (DEBIAN / "changelog").read_text()


def test_maintainer_defaults_to_the_project(tmp_path: Path) -> None:
    result = make_deb_source(tmp_path)
    assert result.returncode == 0, result.stderr
    assert maintainers(tmp_path) == (DEFAULT_MAINTAINER, DEFAULT_MAINTAINER)


def test_maintainer_comes_from_debfullname_and_debemail(tmp_path: Path) -> None:
    wanted = "Jane Doe <jane@example.org>"
    from_env = make_deb_source(tmp_path, env={"DEBFULLNAME": "Jane Doe",
                                              "DEBEMAIL": "jane@example.org"})  # fmt: skip
    assert from_env.returncode == 0, from_env.stderr
    assert maintainers(tmp_path) == (wanted, wanted)
    on_command_line = make_deb_source(tmp_path, "DEBFULLNAME=Jane Doe", "DEBEMAIL=jane@example.org")
    assert on_command_line.returncode == 0, on_command_line.stderr
    assert maintainers(tmp_path) == (wanted, wanted)


def test_a_debemail_that_is_not_an_address_is_one_line(tmp_path: Path) -> None:
    result = make_deb_source(tmp_path, env={"DEBEMAIL": "jane"})
    assert result.returncode != 0
    assert result.stderr.splitlines()[0] == "DEBEMAIL must be an address: 'jane'"

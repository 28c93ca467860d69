"""The production wheel holds the runtime package and nothing of the dev tools.

Built for real with pip (no index, no build isolation: the setuptools of this venv) from a
copy of the source tree, so a stale build/ of the checkout cannot hide or add a file.
The dev-only distribution (tests/devtools, `t3backupd_dev`) is built the same way and must
hold the dev tools, so the two together still provide everything the tests use.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
IGNORED = shutil.ignore_patterns(
    ".git", ".venv", "build", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis"
)
RUNTIME_FILES = {
    "t3backupd/__init__.py",
    "t3backupd/__main__.py",
    "t3backupd/py.typed",
    "t3backupd/core/protocol.py",
    "t3backupd/worker/__main__.py",
    "t3backupd/worker/main.py",
    "t3backupd/worker/files.py",
    "t3backupd/root/cli.py",
    "t3backupd/root/daemon.py",
    "t3backupd/root/runner.py",
}
DEV_MODULES = (
    "t3backupd_dev/__init__.py",
    "t3backupd_dev/demo.py",
    "t3backupd_dev/sampledb/__init__.py",
    "t3backupd_dev/sampledb/__main__.py",
    "t3backupd_dev/sampledb/schema.py",
    "t3backupd_dev/sampledb/generator.py",
    "t3backupd_dev/sampledb/writer.py",
    "t3backupd_dev/sampledb/check.py",
    "t3backupd_dev/sampledb/cli.py",
)


def build_wheel(source: Path, out: Path) -> list[str]:
    """The file names inside the wheel pip builds from `source`."""
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-index",
         "--no-build-isolation", "--wheel-dir", str(out), str(source)],
        capture_output=True, text=True, timeout=300, cwd=out,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    wheels = list(out.glob("*.whl"))
    assert len(wheels) == 1, wheels
    with zipfile.ZipFile(wheels[0]) as wheel:
        return wheel.namelist()


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    copy = tmp_path_factory.mktemp("tree") / "t3backupd"
    shutil.copytree(REPO, copy, ignore=IGNORED, symlinks=True)
    return copy


def test_production_wheel_has_the_runtime_and_no_dev_tools(tree: Path, tmp_path: Path) -> None:
    names = build_wheel(tree, tmp_path)
    assert set(names) >= RUNTIME_FILES, sorted(RUNTIME_FILES - set(names))
    dev = [n for n in names if "sampledb" in n or "demo" in n or n.startswith("t3backupd_dev")]
    assert dev == [], dev
    assert not [n for n in names if n.startswith(("tests/", "bench/"))]
    packages = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert packages == {"t3backupd"}, packages
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    assert metadata.startswith("t3backupd-"), metadata


def test_dev_wheel_has_the_dev_tools_and_nothing_of_the_runtime(tree: Path, tmp_path: Path) -> None:
    names = build_wheel(tree / "tests" / "devtools", tmp_path)
    assert set(names) >= set(DEV_MODULES), sorted(set(DEV_MODULES) - set(names))
    packages = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert packages == {"t3backupd_dev"}, packages

"""The dev tools and the runtime stay apart (statically, over every import statement):

- `t3backupd` never imports `t3backupd_dev` (a production host does not have it);
- `t3backupd_dev` imports only the standard library and itself, so the tests can run it
  as any uid with `python -I` and it never drags daemon code into the app's place.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import t3backupd
import t3backupd_dev

RUNTIME = Path(t3backupd.__file__).parent
DEVTOOLS = Path(t3backupd_dev.__file__).parent


def top_level_imports(package: Path) -> dict[str, set[str]]:
    """file -> the top-level names of everything it imports (absolute imports)."""
    found: dict[str, set[str]] = {}
    for path in sorted(package.rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(package.parent))] = names
    return found


def test_runtime_never_imports_the_dev_tools() -> None:
    imports = top_level_imports(RUNTIME)
    assert len(imports) > 20  # the walk saw the package
    offenders = {f: n for f, n in imports.items() if "t3backupd_dev" in n}
    assert offenders == {}


def test_dev_tools_import_only_the_standard_library_and_themselves() -> None:
    imports = top_level_imports(DEVTOOLS)
    assert {"t3backupd_dev/sampledb/schema.py", "t3backupd_dev/demo.py"} <= set(imports)
    allowed = set(sys.stdlib_module_names) | {"t3backupd_dev"}
    offenders = {f: sorted(n - allowed) for f, n in imports.items() if n - allowed}
    assert offenders == {}


def test_the_dev_tools_are_not_in_the_runtime_package() -> None:
    names = {p.stem for p in RUNTIME.rglob("*.py")}
    assert "sampledb" not in names
    assert "demo" not in names
    assert not (RUNTIME / "sampledb").exists()

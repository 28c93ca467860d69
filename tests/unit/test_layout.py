"""The privilege boundary in the layout: who may import whom, and no import loops.

- `t3backupd.core` (pure) imports only itself;
- `t3backupd.worker` (runs as the user) imports only itself and the core;
- `t3backupd.root` (runs as root) may import anything of ours.
Checked twice: statically over every `import` in the package (function-level imports
included), and dynamically in real worker runs, whose `sys.modules` must hold nothing
of the root side (nor its libraries).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import t3backupd
from t3backupd.core.protocol import SPEC_TYPES

PACKAGE = Path(t3backupd.__file__).parent
ALLOWED = {
    "core": {"core"},
    "worker": {"core", "worker"},
    "root": {"core", "worker", "root"},
}
ROOT_ONLY_LIBRARIES = ("structlog", "apscheduler", "prometheus_client", "sdnotify", "tzlocal")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every t3backupd module `path` imports, wherever the import statement is."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            # `from t3backupd.worker import files` imports the module t3backupd.worker.files
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    modules = {module_name(p) for p in PACKAGE.rglob("*.py")}
    return {name for name in found if name in modules}


def graph() -> dict[str, set[str]]:
    return {module_name(path): imports_of(path) for path in PACKAGE.rglob("*.py")}


def side(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ALLOWED else "top"


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as a list of modules, or None."""
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(edges.get(node, ())):
            # A package's __init__ is imported with its submodules; not a loop by itself.
            if node.startswith(target + "."):
                continue
            if state.get(target) == 1:
                return [*stack[stack.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_finds_a_loop_and_accepts_a_tree() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_package_has_no_import_loop() -> None:
    assert find_cycle(graph()) is None


def test_each_side_imports_only_what_it_may() -> None:
    wrong = [
        f"{module} -> {target}"
        for module, targets in graph().items()
        if side(module) in ALLOWED
        for target in targets
        if side(target) not in ALLOWED[side(module)] | {"top"}
    ]
    assert wrong == []


def test_the_layout_rule_catches_a_worker_importing_the_root_side() -> None:
    edges = {"t3backupd.worker.main": {"t3backupd.root.spawn"}}
    module, targets = next(iter(edges.items()))
    assert any(side(target) not in ALLOWED[side(module)] for target in targets)


def test_the_worker_tree_imports_no_root_side_library() -> None:
    for path in (PACKAGE / "worker").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            for name in names:
                assert name.split(".")[0] not in ROOT_ONLY_LIBRARIES, f"{path}: {name}"


# Runs the real worker entry point, then prints the modules it loaded (atexit: after the
# job, report written). Nothing in the worker knows it is being watched.
PROBE = (
    "import atexit, json, sys\n"
    "atexit.register(lambda: sys.stderr.write('\\nMODULES ' + json.dumps(sorted(sys.modules))))\n"
    "from t3backupd.worker.main import main\n"
    "raise SystemExit(main())\n"
)


@pytest.mark.parametrize(
    "spec_fields",
    [
        {"action": "snapshot", "source": "/nonexistent/state.sqlite"},
        {"action": "inventory"},
        {"action": "verify"},
        {"action": "restore", "snapshot": "latest", "target": "/nonexistent/x"},
        {"action": "adopt"},
    ],
    ids=lambda fields: str(fields["action"]),
)
def test_a_real_worker_job_loads_no_root_side_module(
    tmp_path: Path, spec_fields: dict[str, str]
) -> None:
    dest_dir = tmp_path / "user"
    dest_dir.mkdir(mode=0o700)
    fields = dict(spec_fields)
    kind = SPEC_TYPES[fields.pop("action")]
    spec = kind(user="someone", dest_dir=str(dest_dir), timeout_seconds=30.0, **fields)
    done = subprocess.run(
        [sys.executable, "-I", "-c", PROBE],
        input=spec.to_json(),
        capture_output=True,
        cwd="/",
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        timeout=60,
    )
    report = json.loads(done.stdout)
    assert report["action"] == spec_fields["action"], done.stderr
    modules = json.loads(done.stderr.decode().rsplit("MODULES ", 1)[1])
    assert "t3backupd.worker.main" in modules  # the probe saw a real worker run
    forbidden = [
        name
        for name in modules
        if name.startswith("t3backupd.root") or name.split(".")[0] in ROOT_ONLY_LIBRARIES
    ]
    assert forbidden == []


# Every way of starting a process, by module: only `spawn.launch` may use one.
PROCESS_STARTERS = {
    "subprocess": {"Popen", "run", "call", "check_call", "check_output", "getoutput"},
    "os": {"fork", "forkpty", "system", "popen", "posix_spawn", "posix_spawnp"}
    | {f"exec{suffix}" for suffix in ("l", "le", "lp", "lpe", "v", "ve", "vp", "vpe")}
    | {f"spawn{suffix}" for suffix in ("l", "le", "lp", "lpe", "v", "ve", "vp", "vpe")},
    "pty": {"fork", "spawn"},
    "multiprocessing": {"Process", "Pool"},
}


def process_starts(path: Path) -> list[tuple[str, int]]:
    """(enclosing function, line) of every use of a process-starting call in `path`."""
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST, function: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                visit(child, function or child.name)
                continue
            if isinstance(child, ast.Subscript) and isinstance(child.value, ast.Attribute):
                visit(child.slice, function)  # `subprocess.Popen[bytes]`: a type, no call
                continue
            if (
                isinstance(child, ast.Attribute)
                and isinstance(child.value, ast.Name)
                and child.attr in PROCESS_STARTERS.get(child.value.id, set())
            ):
                found.append((function, child.lineno))
            if isinstance(child, ast.ImportFrom) and child.module in PROCESS_STARTERS:
                names = {alias.name for alias in child.names} & PROCESS_STARTERS[child.module]
                found.extend((function, child.lineno) for _ in names)
            visit(child, function)

    visit(ast.parse(path.read_text(), str(path)), "")
    return found


def test_every_process_is_started_by_the_one_launcher() -> None:
    """One way to start a child, with one set of rules (spawn.launch: tracked under the
    tracker's lock, signals masked, own group, pidfd deadlines, never signalled once
    reaped): no other code of ours starts a process."""
    starts = {
        f"{module_name(path)}:{line} (in {function or 'module'})"
        for path in PACKAGE.rglob("*.py")
        for function, line in process_starts(path)
        if not (module_name(path) == "t3backupd.root.spawn" and function == "launch")
    }
    assert starts == set()
    spawn = PACKAGE / "root" / "spawn.py"
    assert [function for function, _ in process_starts(spawn)] == ["launch"]

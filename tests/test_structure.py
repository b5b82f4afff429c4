"""The house rules of ARCHITECTURE.md, checked on the package code itself.

* layers: a module imports only modules of its own layer or below (``LAYERS``);
* no import circle between modules (module-level imports);
* imports inside functions only for optional heavy dependencies (``OPTIONAL``), never to
  dodge a circle;
* no function longer than ``MAX_FUNCTION_LINES`` lines;
* ``importlib.import_module`` of a package module only by name from a table: the CLI's
  lazy group (``training.cli.COMMANDS``, each a command module of the CLI's own layer)
  and the engine registry (``forecasting.config.ENGINES``); the commands that need no
  MLflow do not import it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import click
import pytest

from training.cli import COMMANDS, LazyGroup, cli

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("forecasting", "registry", "training")
MAX_FUNCTION_LINES = 80

# bottom -> top; the longest matching prefix decides a module's layer
LAYERS = {
    "forecasting": 1,  # the domain: pure, engine-free
    "training.tables": 2,  # Delta tables (deltalake, delta-spark)
    "registry": 3,  # MLflow only
    "training.checkpoints": 2,
    "training.engines": 4,
    "training.jobs": 4,
    "training.global_models": 4,
    "training.deep": 4,
    "training.serving": 5,  # REST API and page
    "training.cli": 6,
    "training.commands": 6,  # the CLI's commands, loaded by its lazy group
    "training": 4,
}

# Modules that need an optional extra (pyspark, torch, fastapi, ...): the only package
# modules that may be imported inside a function.
OPTIONAL = (
    "training.engines.spark",
    "training.engines.spark_refine",
    "training.tables.spark",
    "training.tables.spark_session",
    "training.jobs.forecast_spark",
    "training.jobs.train_spark",
    "training.jobs.cold_start_spark",
    "training.serving",
    "training.deep",
)


def _modules() -> dict[str, Path]:
    found = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


MODULES = _modules()


def layer(module: str) -> int:
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[best]


def _resolve(module: str, path: Path, node: ast.ImportFrom) -> list[str]:
    if node.level:
        base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    if target.split(".")[0] not in PACKAGES:
        return []
    # ``from pkg import submodule`` imports the submodule
    subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in MODULES]
    return subs or [target]


def imports(module: str) -> tuple[set[str], set[str]]:
    """(module-level imports, imports inside functions) of package modules."""
    path = MODULES[module]
    top: set[str] = set()
    inner: set[str] = set()

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            names: list[str] = []
            if isinstance(child, ast.ImportFrom):
                names = _resolve(module, path, child)
            elif isinstance(child, ast.Import):
                names = [a.name for a in child.names if a.name.split(".")[0] in PACKAGES]
            (inner if nested else top).update(names)
            visit(child, nested)

    visit(ast.parse(path.read_text()), False)
    return top, inner


def test_every_package_module_has_a_layer():
    assert MODULES, "no package modules found"
    for module in MODULES:
        assert layer(module) >= 1


def test_no_module_imports_a_layer_above_it():
    wrong = []
    for module in MODULES:
        top, inner = imports(module)
        for target in top | inner:
            if layer(target) > layer(module):
                wrong.append(f"{module} (layer {layer(module)}) imports {target} (layer {layer(target)})")
    assert not wrong, "\n".join(wrong)


def test_imports_inside_functions_only_for_optional_dependencies():
    wrong = []
    for module in MODULES:
        _, inner = imports(module)
        for target in inner:
            if not any(target == o or target.startswith(o + ".") for o in OPTIONAL):
                wrong.append(f"{module} imports {target} inside a function")
    assert not wrong, "\n".join(wrong)


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_circle():
    graph = {m: {t for t in imports(m)[0] if t != m and t in MODULES} for m in MODULES}
    found = _cycle(graph)
    assert found is None, "import circle: " + " -> ".join(found or [])


def test_the_cycle_check_finds_a_circle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_function_over_the_limit(module):
    tree = ast.parse(MODULES[module].read_text())
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines, line {node.lineno})"
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, f"{module}: functions over {MAX_FUNCTION_LINES} lines: {', '.join(long)}"


# -- imports by name -----------------------------------------------------------------------
# Where a package module may call importlib.import_module of a package module, and the
# table it takes the names from: the CLI's lazy group (checked below) and the engine
# registry (tests/test_config.py).
IMPORTS_BY_NAME = {"training.cli", "training.engines"}


def _imports_by_name(module: str) -> bool:
    tree = ast.parse(MODULES[module].read_text())
    return any(
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "import_module"
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "importlib"
        and not (isinstance(node.args[0], ast.Constant) and node.args[0].value.split(".")[0] not in PACKAGES)
        for node in ast.walk(tree)
    )


def test_package_modules_are_imported_by_name_only_from_a_table():
    found = {m for m in MODULES if _imports_by_name(m)}
    assert found == IMPORTS_BY_NAME, f"importlib.import_module in {sorted(found - IMPORTS_BY_NAME)}"


SHARED = ("training.commands.common", "training.commands.progress")  # what the commands share


def test_the_lazy_group_loads_command_modules_of_the_cli_layer():
    assert isinstance(cli, LazyGroup)
    width = 120 - 6 - max(len(name) for name, (_, short) in COMMANDS.items() if short is not None)
    for name, (target, short) in COMMANDS.items():
        module = target.partition(":")[0]
        assert module in MODULES and module.startswith("training.commands."), target
        assert layer(module) == layer("training.cli")
        command = cli.get_command(click.Context(cli), name)
        assert isinstance(command, click.Command) and command.name == name, target
        # the table's short help is what the command's own would be: `mmf --help` shows it
        assert command.hidden == (short is None), name
        assert short is None or command.get_short_help_str(width) == short, name
    modules = {t.partition(":")[0] for t, _ in COMMANDS.values()}
    assert modules == {m for m in MODULES if m.startswith("training.commands.") and m not in SHARED}


LIGHT = (
    "candidates",
    "doctor",
    "generate",
    "ingest",
    "query",
    "refine",
    "repair",
    "restore",
    "serve",
    "vacuum",
)


def test_commands_that_need_no_mlflow_do_not_import_it():
    """``mmf --help`` and the commands that never touch MLflow do not pay for its import."""
    code = (
        "import importlib, sys\n"
        "from training.cli import COMMANDS\n"
        f"for name in {LIGHT!r}:\n"
        "    importlib.import_module(COMMANDS[name][0].partition(':')[0])\n"
        "print(sorted(m for m in ('mlflow', 'sqlalchemy', 'pyspark', 'duckdb') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr

"""The dependency rule of docs/architecture.md: imports only go downwards."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "relay"
# What each layer may import from the project itself, besides its own modules.
ALLOWED_PROJECT_IMPORTS = {
    "core": set(),
    "store": {"core", "child"},
    "net": {"core", "store", "config", "child"},
}
# Third-party packages the sans-I/O core may use: nothing that does I/O.
CORE_THIRD_PARTY = {"coincurve", "orjson"}
CORE_FORBIDDEN_STDLIB = {"asyncio", "socket", "sqlite3", "threading", "concurrent", "websockets"}


def imported_modules(path: Path) -> set[str]:
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module)
    return modules


def layer_files(layer: str) -> list[Path]:
    files = sorted((PACKAGE / layer).glob("*.py"))
    assert files, f"relay/{layer} has no modules"
    return files


@pytest.mark.parametrize("layer", sorted(ALLOWED_PROJECT_IMPORTS))
def test_layer_imports_only_downwards(layer: str) -> None:
    allowed = ALLOWED_PROJECT_IMPORTS[layer] | {layer}
    for path in layer_files(layer):
        for module in imported_modules(path):
            parts = module.split(".")
            if parts[0] == "relay" and len(parts) > 1:
                assert parts[1] in allowed, f"{path.name} imports {module}"


def test_child_process_plumbing_depends_on_nothing_of_the_relay() -> None:
    for module in imported_modules(PACKAGE / "child.py"):
        assert module.split(".")[0] != "relay", f"child.py imports {module}"


def test_settings_depend_on_the_core_only() -> None:
    for module in imported_modules(PACKAGE / "config.py"):
        parts = module.split(".")
        if parts[0] == "relay":
            assert parts[1] == "core", f"config.py imports {module}"


def test_core_does_no_io() -> None:
    for path in layer_files("core"):
        for module in imported_modules(path):
            top = module.split(".")[0]
            assert top not in CORE_FORBIDDEN_STDLIB, f"core/{path.name} imports {module}"
            if top not in ("relay", "__future__"):
                is_stdlib = top in __import__("sys").stdlib_module_names
                assert is_stdlib or top in CORE_THIRD_PARTY, f"core/{path.name} imports {module}"

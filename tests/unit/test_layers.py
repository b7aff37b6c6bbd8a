"""The layers' dependency rules (docs: DESIGN.md, "Layout"), checked on every import the code makes."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("serving", "handlers", "model_store")

HANDLER = "handlers.checkpoint_handler"
RUNTIME = "serving.torchserve"  # TorchServe the process: config, archives, launch, server, the gateway
GATEWAY = "serving.torchserve.gateway"
APP = "serving.app"
CLIENT = "serving.client"
ENTRY_POINT = "serving.__main__"  # `python -m serving`: the app's


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the imported module (or name inside it), absolute
    line: int

    def __str__(self) -> str:
        return f"{self.module}:{self.line} imports {self.target}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def parse_imports(source: str, module: str, package: str) -> list[Import]:
    """Every import that runs, at module level or inside functions; ``if TYPE_CHECKING:`` ones never run."""
    found: list[Import] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking_only(node):
            for statement in node.orelse:
                visit(statement)
            return
        if isinstance(node, ast.Import):
            found.extend(Import(module, alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the importing module's package, one level up per extra dot
                parts = package.split(".")
                anchor = parts[: len(parts) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.extend(Import(module, f"{base}.{alias.name}", node.lineno) for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(source))
    return found


def _imports_in(path: Path) -> list[Import]:
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    return parse_imports(path.read_text(), module, package)


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def imports() -> list[Import]:
    files = [p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))]
    return [i for path in files if "__pycache__" not in path.parts for i in _imports_in(path)]


ALL = imports()


def violations(importers: str, forbidden: tuple[str, ...], *, except_: tuple[str, ...] = ()) -> list[str]:
    """The imports by modules in ``importers`` (but not in ``except_``) of anything in ``forbidden``."""
    return [
        str(i)
        for i in ALL
        if _within(i.module, importers)
        and not any(_within(i.module, p) for p in except_)
        and any(_within(i.target, f) for f in forbidden)
    ]


def test_the_scan_sees_the_code() -> None:
    # A rule that checks nothing passes too: make sure the imports the rules are about are found.
    assert any(i.module == "serving.app.cli" and _within(i.target, RUNTIME) for i in ALL)
    assert any(i.module == HANDLER and _within(i.target, "ts") for i in ALL)
    assert any(_within(i.module, CLIENT) and _within(i.target, "serving.errors") for i in ALL)


def test_the_core_never_imports_the_runtime_the_app_the_clients_or_the_handler() -> None:
    """The core (serving's modules outside torchserve/, app/ and client/) is what every runtime reuses."""
    forbidden = (RUNTIME, APP, CLIENT, "handlers", "ts")
    assert violations("serving", forbidden, except_=(RUNTIME, APP, CLIENT, ENTRY_POINT)) == []


def test_clients_depend_on_the_core_only() -> None:
    """A client install needs no TorchServe: no gateway code, no runtime, no app, no handler."""
    assert violations(CLIENT, (RUNTIME, APP, "handlers", "ts")) == []


def test_the_gateway_never_imports_the_clients_or_the_app() -> None:
    assert violations(GATEWAY, (CLIENT, APP, "handlers")) == []


def test_nothing_imports_the_handler_module() -> None:
    """Importing it pulls in torch and TorchServe's ``ts``: importlib.util.find_spec finds its file."""
    assert [str(i) for i in ALL if _within(i.target, HANDLER)] == []


def test_the_handler_never_imports_the_app_or_starts_servers() -> None:
    assert violations("handlers", (APP, RUNTIME, CLIENT)) == []


def test_only_the_handler_imports_torchserve_s_ts() -> None:
    assert [str(i) for i in ALL if _within(i.target, "ts") and not _within(i.module, "handlers")] == []


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from serving.torchserve import ServerSettings", ["serving.torchserve.ServerSettings"]),
        ("import ts.context", ["ts.context"]),
        ("from . import wire", ["serving.wire"]),
        ("from ..errors import ServerError", ["serving.errors.ServerError"]),
        (
            "import typing\nif typing.TYPE_CHECKING:\n    import serving.app\nelse:\n    import json\n",
            ["typing", "json"],
        ),
        ("def f():\n    from serving.app.cli import main\n", ["serving.app.cli.main"]),
    ],
)
def test_imports_are_read_as_python_resolves_them(source: str, expected: list[str]) -> None:
    in_subpackage = "..errors" in source
    package = "serving.client" if in_subpackage else "serving"
    assert [i.target for i in parse_imports(source, f"{package}.probe", package)] == expected

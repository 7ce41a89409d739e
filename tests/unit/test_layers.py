"""The package's import rule (docs/architecture.md): imports point down the layers, never up or sideways."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "orchestrator"
LEAVES = {"", "errors", "failpoints"}  # "" is the package itself (__version__)
RANK = {"core": 1, "host": 2, "provision": 3, "transport": 3, "observe": 3, "cli": 5, "__main__": 6}


def layer(module: str) -> str:
    head = module.split(".")[0]
    return head if head in RANK or module in LEAVES else "top"


def rank(name: str) -> int:
    return 0 if name in LEAVES else RANK.get(name, 4)


def imports() -> list[tuple[str, str]]:
    """(importer, imported) for every relative import in the package, as dotted names below it."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        me, package = ".".join(parts).removesuffix("__init__").rstrip("."), list(parts[:-1])
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = ".".join([*package[: len(package) - node.level + 1], *(node.module or "").split(".")])
                names = [base] if node.module else [f"{base}.{a.name}" for a in node.names]
                found += [(me, n.strip(".")) for n in names]
    return found


def test_imports_point_down_the_layers() -> None:
    wrong = []
    for me, it in imports():
        mine, theirs = layer(me), layer("" if it == "__version__" else it)
        if mine != theirs and theirs not in LEAVES and rank(theirs) >= rank(mine):
            wrong.append(f"{me} → {it}")
    assert wrong == []


@pytest.mark.parametrize("forbidden", ["transport", "host"])
def test_cli_reads_no_host_itself(forbidden: str) -> None:
    assert [it for me, it in imports() if me.startswith("cli") and layer(it) == forbidden] == []


def test_the_core_imports_only_the_core() -> None:
    assert [
        f"{me} → {it}" for me, it in imports() if layer(me) == "core" and layer(it) not in ("core", *LEAVES)
    ] == []

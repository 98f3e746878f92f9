"""The package code a stage runs: the import closure of its module, read from the source.

A rule's ``input.code`` is the closure of its stage module, so that editing
any package module the stage can import re-runs it, and only it. The closure
follows every ``import`` and ``from ... import`` of the package, at module
level and inside functions, absolute and relative, and adds the ``__init__.py``
of every package on the way (importing ``peekaboo.datasets.base`` runs
``peekaboo/__init__.py`` and ``peekaboo/datasets/__init__.py`` first). It is
an over-approximation: a function-level import counts even when the stage
never calls that function. Imports chosen at run time from a config value (a
dataset's adapter) are not visible in the source; the rule names those itself
(``extra`` modules).

This module reads files only (``ast``): the workflow calls it while it is
parsed, before any job runs, and nothing heavy may be imported then.
"""

from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

PACKAGE = "peekaboo"
PACKAGE_DIR = Path(__file__).resolve().parent


def module_file(name: str) -> Path | None:
    """The source file of package module ``name`` (``peekaboo.x.y``), or None when there is none."""
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    base = PACKAGE_DIR.joinpath(*parts[1:])
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    if len(parts) > 1 and base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


def _is_package(name: str) -> bool:
    path = module_file(name)
    return path is not None and path.name == "__init__.py"


def _resolve_from(name: str, node: ast.ImportFrom) -> str:
    """The absolute module a ``from X import ...`` in module ``name`` reads from."""
    if not node.level:
        return node.module or ""
    package = name if _is_package(name) else name.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


@lru_cache(maxsize=None)
def direct_imports(name: str) -> frozenset[str]:
    """Package modules that module ``name`` imports anywhere in its source."""
    path = module_file(name)
    if path is None:
        raise ModuleNotFoundError(f"no package module {name}")
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                    found.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            source = _resolve_from(name, node)
            if source != PACKAGE and not source.startswith(PACKAGE + "."):
                continue
            found.add(source)
            for alias in node.names:  # ``from . import features``: a submodule, not a name
                if module_file(f"{source}.{alias.name}") is not None:
                    found.add(f"{source}.{alias.name}")
    return frozenset(m for m in found if module_file(m) is not None)


def _with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


@lru_cache(maxsize=None)
def module_closure(name: str) -> frozenset[str]:
    """Every package module that importing (and running) ``name`` can import, ``name`` and its parents included."""
    seen: set[str] = set()
    stack = [name]
    while stack:
        current = stack.pop()
        for module in _with_parents(current):
            if module in seen:
                continue
            if module_file(module) is None:
                raise ModuleNotFoundError(f"no package module {module}")
            seen.add(module)
            stack.extend(direct_imports(module))
    return frozenset(seen)


def closure_files(*names: str) -> list[str]:
    """The source files of the closures of ``names`` (absolute, sorted): a rule's ``input.code``."""
    modules: set[str] = set()
    for name in names:
        modules |= module_closure(name if name.startswith(PACKAGE) else f"{PACKAGE}.{name}")
    return sorted(str(module_file(m)) for m in modules)

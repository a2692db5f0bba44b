"""How a parallel run (pytest-xdist, ``-n`` in pyproject's addopts) hands tests to workers.

A test module that defines a module-scoped fixture of its own (a configured server, a
browser, a fake upstream, tiny diffusers weights) is one unit of work: its tests run on one
worker, one after the other, so the fixture is built once. Spread over several workers, or
interleaved there with other modules' tests, pytest builds it again each time (measured: the
local backend's server, about 26 s each, four times in one run). Every other test is a unit
of its own and goes to whichever worker is free; the largest units go first.

Why not xdist's ``--dist loadgroup`` with ``xdist_group`` marks: pytest-xdist 3.8 tags a
marked test by rewriting ``Item._nodeid``, which pytest 9.2 no longer reads (node ids are
``Item._id`` there), so the marks silently stopped grouping anything. This uses only the
scheduler hook xdist documents (``pytest_xdist_make_scheduler``).
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest


def defines_module_fixture(path: Path) -> bool:
    """Whether the file defines a ``@pytest.fixture(scope="module")`` (or
    ``pytest_asyncio.fixture``) function: read from its syntax tree, since the scheduler
    runs in the controller, which collects nothing."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return False
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for decorator in node.decorator_list:
            if not isinstance(decorator, ast.Call):
                continue
            func = decorator.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name != "fixture":
                continue
            for keyword in decorator.keywords:
                if keyword.arg == "scope" and isinstance(keyword.value, ast.Constant) \
                        and keyword.value.value == "module":
                    return True
    return False


@pytest.hookimpl(optionalhook=True)  # a run without xdist (-p no:xdist) does not know it
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    from xdist.scheduler import LoadScopeScheduling

    class ModuleFixtureScheduling(LoadScopeScheduling):  # type: ignore[misc]
        grouped: set[str] = set()

        def schedule(self) -> None:
            if self.collection is None and self.registered_collections:
                nodeids = next(iter(self.registered_collections.values()))
                modules = {nodeid.split("::", 1)[0] for nodeid in nodeids}
                self.grouped = {m for m in modules
                                if defines_module_fixture(config.rootpath / m)}
            super().schedule()

        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return module if module in self.grouped else nodeid

    return ModuleFixtureScheduling(config, log)

"""A pytest plugin that runs Optax's own tests with adamx in place of Optax.

Loaded with ``-p optax_suite`` (``tests/`` on the path) in a pytest run of
the test files shipped in the optax wheel. Before any test module is imported
it replaces, in every module of the ``optax`` package, each attribute whose
name adamx exports (``optax.adam``, ``optax._src.alias.adam``,
``optax.transforms.masked``, ``optax.tree.get`` ...) with adamx's object, so
that a test looking the name up finds adamx's. Each replaced function is
wrapped once to record that it ran: a test that called none of them does not
exercise adamx and is reported as such.

Environment:
    ADAMX_OPTAX_SUITE_REPORT: where the controller writes the results as JSON,
        ``{"results": {nodeid: [outcome, exercised, message, seconds]},
        "substituted": {dotted name: adamx name}}``.
    ADAMX_OPTAX_SUITE_PLANT: if "adam", ``adam`` is replaced by an adamx Adam
        that steps uphill, for the canary that proves the substitution
        reaches the tests.
    ADAMX_OPTAX_SUITE_BASELINE: if "1", nothing is replaced: Optax's tests run
        against Optax itself, to tell adamx's failures from Optax's own.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import os
import pathlib
import types
from typing import Any

import optax
import pytest

import adamx
import adamx.microbatching

# Set while a test runs when any replaced function has been called.
_used = False
# dotted Optax name -> the adamx name now there.
_substituted: dict[str, str] = {}


def _recording(fn: Any) -> Any:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        global _used
        _used = True
        return fn(*args, **kwargs)

    return wrapper


def _planted_adam() -> Any:
    """``adamx.adam`` stepping uphill."""

    @functools.wraps(adamx.adam)
    def adam(*args: Any, **kwargs: Any) -> adamx.GradientTransformation:
        return adamx.chain(adamx.adam(*args, **kwargs), adamx.scale(-1.0))

    return adam


def _adamx_objects() -> dict[str, Any]:
    """adamx's replacement for each name: top-level names, then adamx.tree's."""
    objects = {}
    for name in adamx.__all__:
        obj = getattr(adamx, name)
        if not isinstance(obj, types.ModuleType):
            objects[name] = obj
    if os.environ.get("ADAMX_OPTAX_SUITE_PLANT") == "adam":
        objects["adam"] = _planted_adam()
    return objects


def _tree_objects() -> dict[str, Any]:
    """adamx.tree's functions, under optax.tree's names and tree_utils' ``tree_``
    names."""
    tree = getattr(adamx, "tree", None)
    if tree is None:
        return {}
    objects = {}
    for name in getattr(tree, "__all__", []):
        objects[name] = getattr(tree, name)
        objects[f"tree_{name}"] = getattr(tree, name)
    return objects


def _optax_modules() -> list[types.ModuleType]:
    """Every module of the optax package except its tests.

    Found by file, since ``optax._src`` has no ``__init__.py`` and
    ``pkgutil.walk_packages`` does not descend into it.
    """
    root = pathlib.Path(optax.__file__).parent
    modules = [optax]
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if parts[-1].endswith("_test") or "experimental" in parts:
            continue
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        try:
            modules.append(importlib.import_module(name))
        except ImportError:
            continue
    return modules


def _is_replaceable(obj: Any) -> bool:
    """Functions and classes Optax defines (not modules, constants or typing
    aliases)."""
    return (inspect.isfunction(obj) or inspect.isclass(obj)) and (
        getattr(obj, "__module__", "") or ""
    ).startswith("optax")


def substitute() -> dict[str, str]:
    """Put adamx's objects in place of Optax's, in every Optax module."""
    top = _adamx_objects()
    tree = _tree_objects()
    wrapped: dict[int, Any] = {}

    def replacement(obj: Any) -> Any:
        if inspect.isclass(obj):
            return obj  # wrapping a class would break isinstance
        if id(obj) not in wrapped:
            wrapped[id(obj)] = _recording(obj)
        return wrapped[id(obj)]

    microbatching = {
        name: getattr(adamx.microbatching, name) for name in adamx.microbatching.__all__
    }
    for module in _optax_modules():
        is_tree = module.__name__ in ("optax.tree", "optax.tree_utils") or (
            module.__name__.startswith("optax.tree_utils.")
        )
        is_microbatching = module.__name__.startswith("optax.microbatching")
        for name, value in list(vars(module).items()):
            # In optax.tree and optax.tree_utils a name is a tree utility
            # (optax.tree.scale is not the transformation optax.scale).
            ours = tree.get(name) if is_tree and name in tree else top.get(name)
            if is_microbatching and name in microbatching:
                ours = microbatching[name]
            if ours is None or not _is_replaceable(value):
                continue
            setattr(module, name, replacement(ours))
            _substituted[f"{module.__name__}.{name}"] = (
                f"{getattr(ours, '__module__', '?')}.{getattr(ours, '__name__', name)}"
            )
    return dict(_substituted)


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("ADAMX_OPTAX_SUITE_BASELINE") != "1":
        substitute()


def pytest_runtest_setup(item: pytest.Item) -> None:
    global _used
    _used = False


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Any:
    outcome = yield
    report = outcome.get_result()
    report.user_properties.append(("adamx", _used))


_results: dict[str, list[Any]] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    exercised = any(v for k, v in report.user_properties if k == "adamx")
    entry = _results.setdefault(report.nodeid, ["passed", False, "", 0.0])
    entry[1] = entry[1] or exercised
    entry[3] += report.duration
    if report.failed:
        entry[0] = "failed"
        message = str(report.longrepr).strip().splitlines()
        entry[2] = message[-1][:300] if message else ""
    elif report.skipped and entry[0] != "failed":
        entry[0] = "skipped"


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = os.environ.get("ADAMX_OPTAX_SUITE_REPORT")
    # Under xdist only the controller (no workerinput) writes.
    if path and not hasattr(session.config, "workerinput"):
        with open(path, "w") as f:
            json.dump({"results": _results, "substituted": _substituted}, f, indent=0)

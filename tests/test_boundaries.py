"""Learned models never see inside the simulated world: only the simulator and the
evaluation code may import its hidden-truth modules (DESIGN §5, issue 3).

Every ``.py`` file of the package, of ``jobs/`` and ``serve_app.py`` is parsed with
``ast`` (nothing is imported or executed) and each import is resolved to absolute module
names, including ``from icebreaker_ray.sim import world``, relative imports and
``importlib.import_module("...")`` with a literal name.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# The modules that hold the world's hidden truth: user state and behaviour, the click
# oracle, and the deployment loop that exposes both.
HIDDEN_MODULES = (
    "icebreaker_ray.sim.world",
    "icebreaker_ray.sim.oracle",
    "icebreaker_ray.sim.deploy",
)
# Packages allowed to import them: the simulator itself, and evaluation, which needs the
# oracle and deployment loop to run simulated A/B tests and score against ground truth.
# Everything else (data, RID, ISG, reward, search, serve, pipeline, cli, jobs) learns from
# the logs the world writes and must never read hidden state.
ALLOWED_IMPORTERS = ("icebreaker_ray/sim/", "icebreaker_ray/eval/")

SCANNED = ("icebreaker_ray", "jobs", "serve_app.py")


def module_name(rel_path: str) -> str:
    """``icebreaker_ray/sim/world.py`` -> ``icebreaker_ray.sim.world`` (packages drop
    ``__init__``)."""
    parts = rel_path.removesuffix(".py").split("/")
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _resolve_relative(module: str | None, level: int, rel_path: str) -> str:
    """The absolute base of ``from <level dots><module> import ...`` inside ``rel_path``."""
    package = module_name(rel_path).split(".")
    if not rel_path.endswith("__init__.py"):
        package = package[:-1]  # a module's own package
    if level - 1 > len(package):
        raise ValueError(f"{rel_path}: relative import beyond the top-level package")
    base = package[: len(package) - (level - 1)]
    return ".".join([*base, *([module] if module else [])])


def imported_modules(source: str, rel_path: str) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) for every import in ``source``. For ``from X import
    a, b`` both ``X`` and ``X.a``/``X.b`` are yielded, since a name may be a submodule."""
    tree = ast.parse(source, filename=rel_path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = (_resolve_relative(node.module, node.level, rel_path) if node.level
                    else node.module or "")
            yield node.lineno, base
            for alias in node.names:
                if alias.name != "*":
                    yield node.lineno, f"{base}.{alias.name}"
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("import_module", "__import__") and node.args:
                arg = node.args[0]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    yield node.lineno, arg.value


def is_hidden(module: str) -> bool:
    return any(module == h or module.startswith(h + ".") for h in HIDDEN_MODULES)


def violations(source: str, rel_path: str) -> list[str]:
    """Imports of hidden-truth modules from a file outside the allowed packages."""
    if rel_path.startswith(ALLOWED_IMPORTERS):
        return []
    return [f"{rel_path}:{line}: imports {module}"
            for line, module in imported_modules(source, rel_path) if is_hidden(module)]


def scanned_files() -> list[Path]:
    files: list[Path] = []
    for entry in SCANNED:
        path = ROOT / entry
        if path.is_dir():
            files += sorted(path.rglob("*.py"))
        elif path.is_file():
            files.append(path)
    return files


def test_hidden_truth_is_imported_only_by_sim_and_eval() -> None:
    files = scanned_files()
    assert len(files) > 10
    found: list[str] = []
    allowed_hidden_imports = 0
    for path in files:
        rel = path.relative_to(ROOT).as_posix()
        source = path.read_text(encoding="utf-8")
        found += violations(source, rel)
        if rel.startswith(ALLOWED_IMPORTERS):
            allowed_hidden_imports += sum(is_hidden(m) for _, m in imported_modules(source, rel))
    assert not found, "hidden-truth modules imported outside sim/ and eval/:\n" + "\n".join(found)
    # The resolver sees the real imports between hidden modules (deploy -> world, oracle),
    # so an empty result above is not the scanner missing everything.
    assert allowed_hidden_imports >= 3


def test_hidden_modules_exist() -> None:
    """A renamed module would make the boundary check silently pass."""
    for module in HIDDEN_MODULES:
        assert (ROOT / (module.replace(".", "/") + ".py")).is_file(), module


FORBIDDEN_SOURCES = [
    "import icebreaker_ray.sim.world",
    "import icebreaker_ray.sim.oracle as oracle",
    "import numpy, icebreaker_ray.sim.deploy",
    "from icebreaker_ray.sim.world import UserState",
    "from icebreaker_ray.sim.deploy import SimEnv as Env",
    "from icebreaker_ray.sim import world",
    "from icebreaker_ray.sim import catalog, oracle",
    "from ..sim import deploy",
    "from ..sim.world import World",
    "from .. import sim as _s\nfrom ..sim import oracle",
    "import importlib\nm = importlib.import_module('icebreaker_ray.sim.world')",
    "def f():\n    from icebreaker_ray.sim.oracle import ClickOracle\n    return ClickOracle",
    "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from icebreaker_ray.sim.world import World",
]
HARMLESS_SOURCES = [
    "from icebreaker_ray.sim.catalog import load_catalog",
    "from icebreaker_ray.sim import catalog, policy",
    "from ..sim.policy import RetrievalPolicy",
    "import icebreaker_ray.sim.worldview",  # a prefix is not the module
    "from icebreaker_ray.eval.metrics import online_metrics",
    "x = 'icebreaker_ray.sim.world'",
]


@pytest.mark.parametrize("source", FORBIDDEN_SOURCES)
def test_checker_flags_forbidden_imports(source: str) -> None:
    for where in ("icebreaker_ray/rid/model.py", "icebreaker_ray/serve/__init__.py"):
        assert violations(source, where), (where, source)
    if "from .." not in source:  # relative imports only exist inside the package
        for where in ("jobs/train_ranker.py", "serve_app.py", "icebreaker_ray/cli.py"):
            assert violations(source, where), (where, source)
    # The same code is fine inside the simulator and the evaluation package.
    for where in ("icebreaker_ray/sim/stage.py", "icebreaker_ray/eval/ab_test.py"):
        assert not violations(source, where), (where, source)


@pytest.mark.parametrize("source", HARMLESS_SOURCES)
def test_checker_passes_harmless_imports(source: str) -> None:
    assert not violations(source, "icebreaker_ray/rid/model.py")


def test_relative_imports_resolve() -> None:
    assert _resolve_relative("world", 1, "icebreaker_ray/sim/stage.py") == "icebreaker_ray.sim.world"
    assert _resolve_relative("sim", 2, "icebreaker_ray/rid/model.py") == "icebreaker_ray.sim"
    assert _resolve_relative(None, 1, "icebreaker_ray/sim/__init__.py") == "icebreaker_ray.sim"
    assert _resolve_relative("sim.oracle", 1, "icebreaker_ray/__init__.py") == "icebreaker_ray.sim.oracle"
    # From a subpackage's __init__, two dots reach the top package.
    found = [m for _, m in imported_modules("from ..sim import deploy", "icebreaker_ray/serve/__init__.py")]
    assert found == ["icebreaker_ray.sim", "icebreaker_ray.sim.deploy"]

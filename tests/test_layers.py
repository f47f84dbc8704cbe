"""The package's architecture as a rule: imports point one way, from the application down to the
KL library, and the KL library needs neither Lightning nor Hydra."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO

#: layer of each sub-package: a module may import only from its own layer or the ones below
LAYERS = {"klexp.errors": 0, "klexp.record": 0, "klexp.core": 1, "klexp.lightning": 2,
          "klexp.nets": 3, "klexp.data": 3, "klexp.tasks": 4, "klexp.app": 5, "klexp.report": 5,
          "klexp.__main__": 5, "klexp.conf": 5}
PACKAGE = REPO / "klexp"


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(name: str) -> int | None:
    return next((rank for prefix, rank in LAYERS.items()
                 if name == prefix or name.startswith(prefix + ".")), None)


def klexp_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {name for name in names if name.startswith("klexp.")}


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if module_name(p) != "klexp")


@pytest.mark.parametrize("path", MODULES, ids=module_name)
def test_every_import_points_down_the_layers(path):
    own = layer(module_name(path))
    assert own is not None, f"{module_name(path)} belongs to no layer"
    upward = [name for name in klexp_imports(path) if (layer(name) or 0) > own]
    assert not upward, f"{module_name(path)} (layer {own}) imports {upward}"


#: the modules that may reach into a library's private modules (each pinned by its own test)
INTERNALS = {"klexp.core.torch_internals", "klexp.lightning.internals", "klexp.app.hydra_internals"}


def private_imports(path: Path) -> set[str]:
    """The modules ``path`` imports that a library keeps private (a dotted part starting ``_``)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {name for name in names if name != "__future__" and not name.startswith("klexp")
            and any(part.startswith("_") and not part.startswith("__") for part in name.split("."))}


def test_only_the_internals_modules_import_a_librarys_private_modules():
    found = {module_name(path): private_imports(path) for path in MODULES}
    assert {name for name, imports in found.items() if imports} <= INTERNALS, found
    assert private_imports(PACKAGE / "app" / "hydra_internals.py") == {"hydra._internal.utils"}


@pytest.mark.slow
def test_the_kl_library_imports_without_lightning_or_hydra():
    code = ("import sys, klexp.core, klexp; klexp.kl; "
            "print(sorted(m for m in ('pytorch_lightning', 'lightning', 'hydra', 'omegaconf') "
            "if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"

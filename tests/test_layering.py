"""Import layering of the source folders, checked on the AST (nothing is imported)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
LAYERS = ("storage", "tasks", "flows", "deployments")
#: What each layer may not import: imports point storage <- tasks <- flows <- deployments.
FORBIDDEN = {
    "storage": ("tasks", "flows", "deployments"),
    "tasks": ("flows", "deployments"),
    "flows": ("deployments",),
    "deployments": (),
}


@dataclass(frozen=True)
class Import:
    """One imported module name, resolved to an absolute name where it was relative."""

    layer: str
    file: Path
    line: int
    module: str
    relative: bool

    def __str__(self) -> str:
        return f"{self.file.relative_to(ROOT)}:{self.line} imports {self.module}"


def _package_of(file: Path, layer: str) -> list[str]:
    """The package a file's relative imports start from (its directory, as a module)."""
    return ["prefect_tune", layer, *file.relative_to(ROOT / layer).parent.parts]


def _imports() -> Iterator[Import]:
    for layer in LAYERS:
        for file in sorted((ROOT / layer).rglob("*.py")):
            tree = ast.parse(file.read_text(), filename=str(file))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    for alias in node.names:
                        yield Import(layer, file, node.lineno, alias.name, False)
                elif isinstance(node, ast.ImportFrom):
                    if node.level == 0:
                        assert node.module is not None
                        yield Import(layer, file, node.lineno, node.module, False)
                        continue
                    package = _package_of(file, layer)
                    base = package[: len(package) - (node.level - 1)]
                    if node.module:
                        yield Import(layer, file, node.lineno, ".".join([*base, node.module]), True)
                    else:
                        for alias in node.names:
                            yield Import(
                                layer, file, node.lineno, ".".join([*base, alias.name]), True
                            )


def _is_under(module: str, package: str) -> bool:
    return module == package or module.startswith(f"{package}.")


IMPORTS = list(_imports())


def test_source_folders_have_python_files() -> None:
    """Guards the checks below against silently scanning nothing."""
    for layer in LAYERS:
        assert (ROOT / layer / "__init__.py").is_file(), f"{layer}/__init__.py is missing"
    assert {i.layer for i in IMPORTS} >= {"storage", "tasks", "flows"}


def test_no_bare_layer_imports() -> None:
    offending = [
        str(i) for i in IMPORTS
        if not i.relative and any(_is_under(i.module, layer) for layer in LAYERS)
    ]
    assert not offending, "import prefect_tune.<layer>, not the bare folder name:\n" + "\n".join(
        offending
    )


@pytest.mark.parametrize("layer", [layer for layer in LAYERS if FORBIDDEN[layer]])
def test_imports_point_one_way(layer: str) -> None:
    banned = [f"prefect_tune.{other}" for other in FORBIDDEN[layer]]
    offending = [
        str(i) for i in IMPORTS
        if i.layer == layer and any(_is_under(i.module, b) for b in banned)
    ]
    assert not offending, f"{layer}/ must not import {', '.join(banned)}:\n" + "\n".join(
        offending
    )


def test_only_block_py_in_storage_imports_prefect() -> None:
    offending = [
        str(i) for i in IMPORTS
        if i.layer == "storage" and _is_under(i.module, "prefect")
        and i.file != ROOT / "storage" / "block.py"
    ]
    assert not offending, "within storage/, only block.py may import prefect:\n" + "\n".join(
        offending
    )


def test_no_init_py_at_repo_root() -> None:
    assert not (ROOT / "__init__.py").exists(), (
        f"{ROOT / '__init__.py'} must not exist: the repo root is not a package"
    )


def test_a_trial_process_does_not_import_prefect() -> None:
    """The child that runs a trial imports only the storage and the session, so that it
    starts in a fraction of a second."""
    import subprocess
    import sys

    probe = "import sys, prefect_tune.tasks.child; print('prefect' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True, timeout=60)
    assert done.stdout.strip() == "False"

"""The package layers import only downwards (docs/architecture.md, "Layers").

core (base) < services, export (models) < workers < gateway < medstack (application).
Every import is checked, including the ones inside functions.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from core.settings import REPO_ROOT

# what each package must never import: every package above it
FORBIDDEN: dict[str, set[str]] = {
    "core": {"services", "export", "workers", "gateway", "medstack"},
    "services": {"workers", "gateway", "medstack"},
    "export": {"workers", "gateway", "medstack"},
    "workers": {"gateway", "medstack"},
    "gateway": {"medstack"},
}


def imported_packages(path: Path) -> set[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[tuple[int, str]] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update((node.lineno, alias.name.split(".")[0]) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add((node.lineno, node.module.split(".")[0]))
    return found


def upward_imports(package: str) -> list[str]:
    forbidden = FORBIDDEN[package]
    return [
        f"{path.relative_to(REPO_ROOT)}:{line} imports {top}"
        for path in sorted((REPO_ROOT / package).rglob("*.py"))
        for line, top in sorted(imported_packages(path))
        if top in forbidden
    ]


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_upward_imports(package: str) -> None:
    assert upward_imports(package) == []


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from gateway.main import app\n    import medstack.cli\n")
    assert imported_packages(module) == {(2, "gateway"), (3, "medstack")}


def test_readme_layout_names_every_top_level_package() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    packages = [p.parent.name for p in REPO_ROOT.glob("*/__init__.py")]
    missing = [name for name in packages if f"`{name}/`" not in readme.split("## Layout", 1)[1]]
    assert not missing, f"README's layout table lacks {missing}"

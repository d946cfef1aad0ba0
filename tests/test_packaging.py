"""The installed package (a wheel, the node image) holds every package of the tree."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_package_of_the_tree_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    tree = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "fedpeer").rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    assert tree - listed == set(), "add these to [tool.setuptools] packages, or the wheel lacks them"
    assert "fedpeer_cli" in listed

"""The package's layout: subpackages whose layering pyproject.toml declares (import-linter contracts, which the
test command checks with `lint-imports`), each module with a docstring that states its job."""

import ast
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest's own TOML reader
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "charlstm"


def test_every_subpackage_is_in_the_layers_contract():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    contracts = config["tool"]["importlinter"]["contracts"]
    layers = next(c for c in contracts if c["type"] == "layers")["layers"]
    named = {part.strip() for layer in layers for part in layer.split("|")}
    subpackages = {f"charlstm.{p.parent.name}" for p in PACKAGE.glob("*/__init__.py")}
    assert subpackages <= named, f"subpackages outside the layers contract: {sorted(subpackages - named)}"
    modules = {f"charlstm.{p.stem}" for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__")}
    assert modules <= named  # the modules at the top of the package (config, errors) are layers too


def test_every_module_says_what_it_does():
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "__main__.py":
            continue
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
        assert doc and len(doc) > 20, f"{path.relative_to(ROOT)} has no docstring saying what it holds"

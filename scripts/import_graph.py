"""The package's import graph: which charlstm module imports which, in layers from the bottom up, and any cycle.

    python scripts/import_graph.py          # layers, then one line per module with what it imports
    python scripts/import_graph.py --check  # exit 1 on a cycle (tests/test_layout.py runs the same check)

Read from the source with `ast` (nothing is imported), counting imports inside functions too.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "charlstm"


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """module name -> the package's modules it imports (`from . import x`, `from .x import y`, `import charlstm.x`)."""
    modules = {path.stem for path in package.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in sorted(package.glob("*.py")):
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    found.add(node.module.split(".")[0])
                else:
                    found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("charlstm."):
                found.add(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("charlstm."))
        graph[path.stem] = {m for m in found if m in modules and m != path.stem}
    return graph


def layers(graph: dict[str, set[str]]) -> tuple[list[list[str]], list[str]]:
    """Modules in layers (each imports only from layers below it), and the modules left in cycles."""
    placed: set[str] = set()
    result = []
    while len(placed) < len(graph):
        layer = sorted(m for m in graph if m not in placed and graph[m] <= placed)
        if not layer:
            return result, sorted(set(graph) - placed)
        result.append(layer)
        placed.update(layer)
    return result, []


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check: exit 1 on a cycle")
    args = parser.parse_args()
    graph = import_graph()
    found, cyclic = layers(graph)
    if not args.check:
        for level, layer in enumerate(found):
            print(f"layer {level}: {', '.join(layer)}")
        print()
        for module in (m for layer in found for m in layer):
            print(f"{module:>15} <- {', '.join(sorted(graph[module])) or '-'}")
    if cyclic:
        print(f"import cycle among: {', '.join(cyclic)}", file=sys.stderr)
        return 1
    print(f"{len(graph)} modules, no import cycle")
    return 0


if __name__ == "__main__":
    sys.exit(main())

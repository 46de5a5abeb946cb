"""The package's layout as the README states it: no import cycle, and each module imports only modules the
README's layout table lists above it."""

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("import_graph", ROOT / "scripts" / "import_graph.py")
import_graph = importlib.util.module_from_spec(spec)
spec.loader.exec_module(import_graph)


def test_no_import_cycle():
    _, cyclic = import_graph.layers(import_graph.import_graph())
    assert cyclic == []


def test_every_module_imports_only_modules_listed_above_it_in_the_readme():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    layout = readme[readme.index("## Layout") :]
    order = re.findall(r"^\| `(\w+)\.py` \|", layout, flags=re.M)
    graph = import_graph.import_graph()
    assert set(order) == set(graph) - {"__init__", "__main__"}  # every module listed, once
    assert len(order) == len(set(order))
    for position, module in enumerate(order):
        above = set(order[:position])
        assert graph[module] <= above, f"{module} imports {sorted(graph[module] - above)}, listed below it"

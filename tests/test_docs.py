"""The docs hold to the code: the command-line reference is what the Typer app generates, every module is on its
subpackage's architecture page, the README's links resolve and it stays a short front door. (The test command
builds the whole site with `mkdocs build --strict`, which fails on a broken link or a page left out.)"""

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PACKAGE = ROOT / "charlstm"


def cli_reference():
    spec = importlib.util.spec_from_file_location("cli_reference", ROOT / "scripts" / "cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_cli_reference_is_what_the_app_generates():
    generated = cli_reference().render()
    written = (DOCS / "reference" / "cli.md").read_text(encoding="utf-8")
    assert written == generated, "docs/reference/cli.md is out of date: run python scripts/cli_reference.py"


def test_the_cli_reference_names_every_command_and_option():
    import typer

    module = cli_reference()
    page = module.render()
    group = typer.main.get_command(module.find_app())
    ctx = group.context_class(group, info_name="charlstm")
    names = group.list_commands(ctx)
    assert {"train", "sample", "info", "eval"} <= set(names)
    for name in names:
        assert f"\n## charlstm {name}\n" in page
        section = page.split(f"\n## charlstm {name}\n")[1].split("\n## ")[0]
        for param in group.get_command(ctx, name).params:
            if param.param_type_name == "option" and param.name != "help":
                long_name = next(o for o in param.opts if o.startswith("--"))
                assert f"`{long_name}" in section, (name, param.opts)


def test_every_module_is_on_its_architecture_page():
    for init in sorted(PACKAGE.glob("*/__init__.py")):
        subpackage = init.parent.name
        page = DOCS / "architecture" / f"{subpackage}.md"
        assert page.exists(), f"charlstm/{subpackage}/ has no page docs/architecture/{subpackage}.md"
        text = page.read_text(encoding="utf-8")
        listed = set(re.findall(r"^\| `(\w+\.py)` \|", text, flags=re.M))
        modules = {p.name for p in init.parent.glob("*.py") if p.name != "__init__.py"}
        assert modules - listed == set(), f"docs/architecture/{subpackage}.md does not describe {modules - listed}"
        assert listed - modules == set(), f"docs/architecture/{subpackage}.md names modules gone: {listed - modules}"


def test_the_readme_links_resolve_and_it_stays_short():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.encode("utf-8")) <= 12 * 1024, "the README is the front door: move the detail to a docs page"
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme)
    assert targets
    for target in targets:
        if not re.match(r"[a-z]+://", target):
            assert (ROOT / target).exists(), f"README.md links to {target}, which is not there"


def test_user_docs_name_no_place_outside_the_repository():
    pages = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
    outside = re.compile(r"\.\./shared|/work/|/tmp/|\bthis session\b|\bprevious session\b|\bthe issue'?s?\b", re.I)
    for page in pages:
        for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            assert not outside.search(line), f"{page.relative_to(ROOT)}:{number}: {line.strip()}"

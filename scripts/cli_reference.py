"""Write docs/reference/cli.md, the command-line reference, from the Typer app itself.

Every command, argument and option with its help and default, as `--help` knows them, so the page cannot drift
from the code: tests/test_docs.py renders it again in memory and fails when the file differs.

    python scripts/cli_reference.py          # write docs/reference/cli.md
    python scripts/cli_reference.py --check  # exit 1 when docs/reference/cli.md is out of date
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from pathlib import Path

import typer

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "reference" / "cli.md"
COMMAND = "charlstm"


def find_app() -> typer.Typer:
    """The Typer app: found through the console script that pyproject.toml declares, else the module that builds it.

    The entry point names the module that runs the app (today `charlstm.cli.app:run`); the app is the `typer.Typer`
    among that module's names. Where the entry point's module only imports a runner, the module under charlstm/cli/
    that says `app = typer.Typer(` holds it.
    """
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: pytest's own TOML reader
        import tomli as tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    entry = config["project"]["scripts"][COMMAND]
    candidates = [entry.split(":")[0]]
    for path in sorted((ROOT / "charlstm" / "cli").rglob("*.py")):
        if re.search(r"^app\s*=\s*typer\.Typer\(", path.read_text(encoding="utf-8"), flags=re.M):
            candidates.append(".".join(path.relative_to(ROOT).with_suffix("").parts))
    for name in candidates:
        module = importlib.import_module(name)
        apps = [value for value in vars(module).values() if isinstance(value, typer.Typer)]
        if apps:
            return apps[0]
    raise SystemExit(f"no typer.Typer app found in {', '.join(candidates)}")


# ------------------------------------------------------------------------------------------------ Markdown


def _unmarkup(text: str) -> str:
    r"""Help text as a reader sees it: Rich's escaped bracket (`charlstm\[export]`) becomes a bracket."""
    return text.replace("\\[", "[")


def _cell(text: str) -> str:
    """Text for a Markdown table cell: pipes, brackets, angle brackets and asterisks kept literal (code spans too)."""
    parts = text.split("`")
    for i in range(0, len(parts), 2):  # outside code spans
        parts[i] = (
            parts[i]
            .replace("\\", "\\\\")
            .replace("*", "\\*")
            .replace("[", "\\[")
            .replace("<", "&lt;")
            .replace(">", "&gt;")
        )
    return "`".join(parts).replace("|", "\\|")


def _code(text: str) -> str:
    return f"`{text}`".replace("|", "\\|")


def _paragraphs(doc: str | None) -> list[str]:
    """A command's docstring as paragraphs, each one line (as --help wraps them to the terminal)."""
    if not doc:
        return []
    return [" ".join(p.split()) for p in re.split(r"\n\s*\n", inspect.cleandoc(_unmarkup(doc)))]


def _is_option(param) -> bool:
    """Options and arguments told apart as Click names them (Typer may bring its own copy of Click)."""
    return param.param_type_name == "option"


def _summary(command) -> str:
    """The line --help lists a command with: the first line of its docstring."""
    return inspect.cleandoc(_unmarkup(command.help or "")).split("\n")[0].strip()


DEFAULT_IN_HELP = re.compile(r"\s*\(default: (?P<value>.*)\)\s*$", flags=re.S)


def _help_and_default(param) -> tuple[str, str]:
    """A parameter's help and its default: the default its help states, else the one --help shows."""
    help_text = " ".join(_unmarkup(getattr(param, "help", None) or "").split())
    stated = DEFAULT_IN_HELP.search(help_text)
    if stated:
        return help_text[: stated.start()].rstrip(), _cell(stated.group("value"))
    if getattr(param, "show_default", None) is False:
        return help_text, "—"
    default = param.default
    if _is_option(param) and param.is_flag and not param.secondary_opts:
        return help_text, "on" if default else "off"
    if default is None or default == "" or default == [] or default == ():
        return help_text, "—"
    if isinstance(default, (list, tuple)):
        return help_text, ", ".join(_code(str(v)) for v in default)
    if isinstance(default, bool):
        return help_text, _code(param.opts[0] if default else param.secondary_opts[0])
    return help_text, _code(str(default))


TYPE_NAMES = {"str": "TEXT", "int": "INTEGER", "float": "FLOAT", "path": "PATH", "bool": "BOOLEAN"}


def _metavar(param, ctx) -> str:
    """The value a parameter takes, named as Click names it (TEXT, INTEGER, PATH), whichever Typer builds the command.

    Click's parameters carry a `type` with a name; Typer's own (0.29 on) describe their annotation instead, as
    `<str>` or `<list[Path]>`.
    """
    if param.metavar:
        name = param.metavar
    elif getattr(param, "type", None) is not None:
        name = param.type.name.upper()
    else:
        shown = param.display_type(ctx) if callable(param.display_type) else str(param.display_type)
        inner = re.sub(r"^list\[(.*)\]$", r"\1", shown.strip("<>"))
        name = TYPE_NAMES.get(inner.lower(), inner.upper())
    if not _is_option(param):
        name = param.metavar or param.name.upper()
        return name + ("..." if param.nargs == -1 else "")
    return name


def _usage(argument, ctx) -> str:
    """An argument in the usage line: NAME, [NAME] when it may be left out, ... when it takes several."""
    name = _metavar(argument, ctx)
    return name if argument.required else f"[{name.removesuffix('...')}]" + ("..." if name.endswith("...") else "")


def _option_name(param, ctx) -> str:
    long_names = [o for o in param.opts if o.startswith("--")] or param.opts
    short_names = [o for o in param.opts if o not in long_names]
    if param.is_flag:
        shown = ", ".join(_code(o) for o in long_names + short_names)
        return shown + "".join(f" / {_code(o)}" for o in param.secondary_opts)
    shown = _code(f"{long_names[0]} {_metavar(param, ctx)}")
    aliases = [_code(o) for o in long_names[1:] + short_names]
    return ", ".join([shown, *aliases])


def _params_table(rows: list[tuple[str, str, str]], heading: str) -> list[str]:
    if not rows:
        return []
    lines = [f"**{heading}**", "", f"| {heading.lower()[:-1]} | description | default |", "| --- | --- | --- |"]
    lines += [f"| {name} | {_cell(help_text)} | {default} |" for name, help_text, default in rows]
    return [*lines, ""]


def _command_section(name: str, command, parent) -> list[str]:
    ctx = command.context_class(command, info_name=name, parent=parent)
    usage = " ".join([COMMAND, name, "[OPTIONS]", *(_usage(p, ctx) for p in command.params if not _is_option(p))])
    lines = [f"## {COMMAND} {name}", "", *[line for p in _paragraphs(command.help) for line in (_cell(p), "")]]
    lines += ["```text", usage, "```", ""]
    arguments, options = [], []
    for param in command.params:
        if getattr(param, "hidden", False) or param.name == "help":
            continue
        help_text, default = _help_and_default(param)
        if _is_option(param):
            options.append((_option_name(param, ctx), help_text, default))
        else:
            required = "" if param.required else " (optional)"
            arguments.append((_code(_metavar(param, ctx)) + required, help_text, default))
    return lines + _params_table(arguments, "Arguments") + _params_table(options, "Options")


def render(app: typer.Typer | None = None) -> str:
    """The whole page, as Markdown."""
    group = typer.main.get_command(app if app is not None else find_app())
    ctx = group.context_class(group, info_name=COMMAND)
    names = [n for n in group.list_commands(ctx) if not group.get_command(ctx, n).hidden]
    lines = [
        "# Command-line reference",
        "",
        "<!-- Generated from the Typer app by scripts/cli_reference.py; do not edit by hand. -->",
        "",
        f"{_cell(_paragraphs(group.help)[0]) if group.help else ''}",
        "",
        f"`{COMMAND} COMMAND --help` (or `-h`) prints the same help in the terminal; `{COMMAND} --version` prints the "
        "version. `python -m charlstm` runs the same commands. This page is generated from the command-line code "
        "(`python scripts/cli_reference.py`), and the tests fail when it is out of date.",
        "",
        "| command | what it does |",
        "| --- | --- |",
    ]
    for name in names:
        lines.append(f"| [`{name}`](#{COMMAND}-{name}) | {_cell(_summary(group.get_command(ctx, name)))} |")
    lines.append("")
    for name in names:
        lines += _command_section(name, group.get_command(ctx, name), ctx)
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(ROOT))  # the checkout's charlstm, even where another one is installed
    text = render()
    if "--check" in argv:
        if not PAGE.exists() or PAGE.read_text(encoding="utf-8") != text:
            print(f"{PAGE.relative_to(ROOT)} is out of date: run python scripts/cli_reference.py", file=sys.stderr)
            return 1
        return 0
    PAGE.parent.mkdir(parents=True, exist_ok=True)
    PAGE.write_text(text, encoding="utf-8")
    print(f"wrote {PAGE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

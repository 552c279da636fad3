"""MkDocs hook: the pages that must not drift from the code are generated from it at build time.

- ``<!-- uni_lab:params KIND NAME -->`` in a page becomes the table of that registered plugin's
  parameters, defaults and accepted values, read from the registry (the plugin's own signature).
- ``<!-- uni_lab:cli -->`` becomes the reference of every ``uni-lab`` subcommand, read from the
  argparse parsers that ``uni_lab.cli.build_parser`` builds.
- ``<!-- uni_lab:run -->`` / ``<!-- uni_lab:evaluate -->`` become ``uni_lab.run``'s / ``uni_lab.evaluate``'s signature
  and docstring, which are made from ``RunConfig`` / ``EvaluateConfig`` at import time (a static reader such as mkdocstrings sees only ``*args, **kwargs``).
- Sphinx roles in docstrings (``:class:``, ``:func:``, ...) render as plain code.
- Files that live outside ``docs/`` (``BENCHMARKS.md``, ``notebooks/tutorial_*.ipynb``) join the
  site under their own names, so the reports and tutorials are not copies that drift.
- Every registered explainer must have a page ``explainers/<name>.md`` and every such page a
  registered explainer; a missing one is a warning, which ``mkdocs build --strict`` turns into a
  failure.
"""
from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

log = logging.getLogger("mkdocs.hooks.uni_lab")
ROOT = Path(__file__).resolve().parents[2]
PARAMS = re.compile(r"<!-- uni_lab:params (\w+) ([\w:]+) -->")
CLI = "<!-- uni_lab:cli -->"
SIGNATURE = re.compile(r"<!-- uni_lab:(run|evaluate) -->")
ROLE_MD = re.compile(r":(?:mod|func|class|meth|data|attr|exc):`~?([^`]+)`")
ROLE_HTML = re.compile(r":(?:mod|func|class|meth|data|attr|exc):(<code>)~?")
# the order a reader needs them in; a new subcommand comes last until it is placed here
COMMANDS = ("run", "evaluate", "plugins", "check", "bench")
OUTSIDE = {"BENCHMARKS.md": ROOT / "BENCHMARKS.md"}
TUTORIALS = "notebooks"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def params_table(kind: str, name: str) -> str:
    import uni_lab
    from uni_lab.registry import REQUIRED

    plugin = uni_lab.get(kind, name)
    rows = ["| parameter | default | accepts | set it with |", "|---|---|---|---|"]
    for key, default in plugin.params.items():
        accepts = plugin.declared.get(key)
        what = accepts._what() if accepts else ""
        if accepts and accepts.bounds:
            from uni_lab.registry import _bound_text

            what = ", ".join(filter(None, [what, *(_bound_text(b) for b in accepts.bounds)]))
        if accepts and accepts.fewer_than_pixels:
            what = ", ".join(filter(None, [what, "< H·W (the images' pixels, checked before computing)"]))
        shown = "(required)" if default is REQUIRED else f"`{default!r}`"
        rows.append(f"| `{key}` | {shown} | {_cell(what) or 'any'} | `--set {name}.{key}=...` |")
    if len(rows) == 2:
        return f"`{name}` takes no parameters."
    return (f"Read from the signature of the registered {kind} `{name}` ({_cell(plugin.description).rstrip('.')}); "
            f"`uni-lab plugins --kind {kind} '{name}'` prints the same.\n\n" + "\n".join(rows))


def _options(parser: argparse.ArgumentParser) -> list[str]:
    formatter = parser._get_formatter()
    rows = ["| option | meaning |", "|---|---|"]
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        names = ", ".join(f"`{o}`" for o in action.option_strings) or f"`{action.metavar or action.dest}`"
        if action.option_strings and action.nargs != 0:
            names += f" `{formatter._format_args(action, formatter._get_default_metavar_for_optional(action))}`"
        default = action.default
        help_text = formatter._expand_help(action) if action.help else ""
        if action.choices and "{" not in help_text:
            help_text += f" (one of {', '.join(map(str, action.choices))})"
        if default not in (None, argparse.SUPPRESS, [], False) and action.nargs != 0 and "default" not in help_text:
            help_text += f" (default: `{default!r}`)"
        rows.append(f"| {names} | {_cell(help_text)} |")
    return rows


def cli_reference() -> str:
    from uni_lab import cli

    parser, _ = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    out = [f"`{parser.prog}`: {parser.description} Every subcommand prints this with `--help`.", ""]
    for name, p in sorted(sub.choices.items(), key=lambda kv: (COMMANDS + (kv[0],)).index(kv[0])):
        usage = p.format_usage().removeprefix("usage: ").strip()
        out += [f"## `uni-lab {name}`", "", _cell(p.description or ""), "", "```text", usage, "```", "",
                *_options(p), ""]
    return "\n".join(out)


def signature_reference(name: str) -> str:
    """``uni_lab.run`` or ``uni_lab.evaluate``: both get their signature and docstring from a
    declared configuration at import time."""
    import uni_lab

    fn = getattr(uni_lab, name)
    intro, fields = ROLE_MD.sub(r"`\1`", fn.__doc__).strip().rsplit("\n\n", 1)
    params = ",\n".join(f"    {p}" for p in fn.__signature__.parameters.values())
    items = "\n".join(f"- {line}" for line in fields.splitlines())
    return f"```python\nuni_lab.{name}(\n{params},\n)\n```\n\n{intro}\n\n{items}"


def explainers_with_pages(files) -> tuple[set, set]:
    import uni_lab

    registered = {p.name for p in uni_lab.list_plugins("explainer")}
    pages = {Path(f.src_uri).stem for f in files if f.src_uri.startswith("explainers/")
             and f.src_uri.endswith(".md") and Path(f.src_uri).stem != "index"}
    return registered, pages


@event_priority(100)  # before mkdocs-jupyter, so the tutorials it renders include these
def on_files(files, config):
    for dest, src in OUTSIDE.items():
        files.append(File.generated(config, dest, abs_src_path=str(src)))
    # a real file under the repository root (mkdocs-jupyter reads notebooks from src_dir, not generated files)
    for nb in sorted((ROOT / TUTORIALS).glob("tutorial_*.ipynb")):
        files.append(File(f"{TUTORIALS}/{nb.name}", src_dir=str(ROOT), dest_dir=config.site_dir,
                          use_directory_urls=config.use_directory_urls))
    registered, pages = explainers_with_pages(files)
    for name in sorted(registered - pages):
        log.warning(f"explainer '{name}' is registered but has no page docs/explainers/{name}.md")
    for name in sorted(pages - registered):
        log.warning(f"docs/explainers/{name}.md describes no registered explainer")
    return files


def on_page_markdown(markdown, page, config, files):
    markdown = PARAMS.sub(lambda m: params_table(m[1], m[2]), markdown)
    if CLI in markdown:
        markdown = markdown.replace(CLI, cli_reference())
    markdown = SIGNATURE.sub(lambda m: signature_reference(m[1]), markdown)
    return markdown


def on_page_content(html, page, config, files):
    return ROLE_HTML.sub(r"\1", html)

"""The shape of the package: layers as packages, one-way imports, small modules and functions.

Data flows one way, and the folders say how: ``io`` (specs, data, models, files) -> ``method``
(noise, sampling engine, certificate, Algorithm 1) -> ``runs`` (the resumable jobs of each
command) -> ``reports`` (figures and tables) -> ``experiments`` (whole studies) -> ``cli``. A
module imports only from lower layers, or from modules listed before it in its own layer
(:data:`LAYERS`). The package root is the public API and may use every layer; ``errors`` and
``version`` sit below them all. Functions stay small enough to read at once: at most
:data:`MAX_BODY_LINES` lines after the docstring and :data:`MAX_PARAMETERS` parameters, except
the Typer commands, whose signatures are their options; modules at most :data:`MAX_MODULE_LINES`.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "nrs_cli"
BOTTOM = ["version", "errors"]
LAYERS = {
    "io": ["collective", "spec_files", "spec_ranges", "spec", "spec_template", "serialization", "runstate", "tables",
           "devices", "distributed", "data", "folders", "loaders", "architectures", "models", "layout"],
    "method": ["noise", "sigma", "sampling", "certificate", "smooth", "algorithm1", "fronts", "statistics"],
    "runs": ["train", "certification", "work", "evaluation", "reference", "optimization", "sweep", "cooptimize", "jobs",
             "fit"],
    "reports": ["metrics", "style", "result_files", "plots", "tables", "sigma_images"],
    "experiments": ["gains", "figures", "compare"],
    "cli": [
        "manual", "app", "options", "progress", "run_commands", "optimize_commands", "report_commands", "spec_commands"
    ],
}  # fmt: skip
TOP = ["__init__", "__main__"]  # the public API and `python -m nrs_cli`
MAX_BODY_LINES = 60
MAX_PARAMETERS = 8
MAX_MODULE_LINES = 450


def order() -> list[str]:
    """Every module by dotted name (``method.noise``), lowest first."""
    layered = [f"{layer}.{module}" for layer, modules in LAYERS.items() for module in [*modules, "__init__"]]
    return BOTTOM + layered + TOP


def modules() -> dict[str, ast.Module]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        found[name] = ast.parse(path.read_text())
    return found


def imported(tree: ast.Module) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nrs_cli"):
            dotted = node.module.removeprefix("nrs_cli").removeprefix(".")
            if dotted in LAYERS:  # `from nrs_cli.cli import app, main`: a module of the layer, or its __init__
                names.update(f"{dotted}.{a.name if a.name in LAYERS[dotted] else '__init__'}" for a in node.names)
            else:
                names.add(dotted or "__init__")
    return names


def functions(tree: ast.Module):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def is_typer_command(node: ast.FunctionDef) -> bool:
    return any(isinstance(d, ast.Call) and getattr(d.func, "id", "") == "command" for d in node.decorator_list)


def body_lines(node: ast.FunctionDef) -> int:
    body = node.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:] or body  # the docstring does not count
    return node.end_lineno - body[0].lineno + 1


def test_every_module_has_a_layer():
    assert sorted(modules()) == sorted(order())


def test_imports_only_go_down_the_layers():
    rank = {name: k for k, name in enumerate(order())}
    wrong = []
    for name, tree in modules().items():
        for target in imported(tree):
            if target not in rank or (rank[target] >= rank[name] and name != "__init__"):
                wrong.append(f"{name} imports {target}")
    assert not wrong, wrong


def test_functions_are_short_and_take_few_parameters():
    too_long, too_many = [], []
    for name, tree in modules().items():
        for node in functions(tree):
            where = f"{name}.{node.name}"
            if body_lines(node) > MAX_BODY_LINES:
                too_long.append(f"{where}: {body_lines(node)} lines")
            arguments = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
            count = len([a for a in arguments if a.arg not in ("self", "cls")])
            if count > MAX_PARAMETERS and not is_typer_command(node):
                too_many.append(f"{where}: {count} parameters")
    assert not too_long, too_long
    assert not too_many, too_many


def test_modules_are_small():
    long = [
        str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if len(p.read_text().splitlines()) > MAX_MODULE_LINES
    ]
    assert not long, long


def summary(tree: ast.Module) -> str:
    """The first line of a module's docstring (a whole sentence, by the docstring convention here)."""
    return ast.get_docstring(tree).splitlines()[0].rstrip(".").replace("``", "`")


def module_map() -> str:
    """The README's map of the package: each layer and each of its modules with its first sentence."""
    trees = modules()
    lines, width = [], max(len(name) for names in LAYERS.values() for name in names) + 1
    for layer, names in LAYERS.items():
        lines.append(f"{layer}/  {summary(trees[f'{layer}.__init__'])}")
        lines += [f"  {name:<{width}}{summary(trees[f'{layer}.{name}'])}" for name in names]
    return "\n".join(lines)


def test_the_readme_module_map_is_the_package():
    """README.md shows :func:`module_map` between its markers (regenerate with
    ``python tests/test_structure.py``)."""
    readme = (ROOT / "README.md").read_text()
    found = re.search(r"<!-- module map -->\n```\n(.*?)\n```\n<!-- /module map -->", readme, re.S)
    assert found and found.group(1) == module_map()


if __name__ == "__main__":
    print(module_map())

"""The shape of the package: one-way imports, short functions, few parameters.

Data flows one way (spec -> data and model -> sampling engine -> certify /
optimize -> results -> plots -> CLI): a module imports only modules earlier in
:data:`LAYERS`. Functions stay small enough to read at once: at most
:data:`MAX_BODY_LINES` lines after the docstring and :data:`MAX_PARAMETERS`
parameters, except the Typer commands, whose signatures are their options.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "nrs_cli"
LAYERS = [
    "__init__", "errors", "collective", "spec", "serialization", "devices", "data", "models", "sigma", "layout",
    "noise", "sampling", "metrics", "results", "certify", "compare", "optimize", "certify_runs", "train", "sweep",
    "cooptimize", "plots", "tables", "sigma_images", "figures", "methods", "distributed", "cli", "__main__",
]  # fmt: skip
MAX_BODY_LINES = 60
MAX_PARAMETERS = 8


def modules() -> dict[str, ast.Module]:
    return {path.stem: ast.parse(path.read_text()) for path in sorted(PACKAGE.glob("*.py"))}


def imported(tree: ast.Module) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nrs_cli"):
            parts = node.module.split(".")
            names.add(parts[1] if len(parts) > 1 else "__init__")
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
    assert sorted(modules()) == sorted(LAYERS)


def test_imports_only_go_down_the_layers():
    wrong = []
    for name, tree in modules().items():
        for target in imported(tree):
            if LAYERS.index(target) >= LAYERS.index(name):
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

"""Imports run one way: the CLI and flows on top, kernels and storage at the bottom.

Every project module belongs to one layer of :data:`LAYERS`; a module may import modules of its own
layer or below, never above, not even lazily inside a function or under ``TYPE_CHECKING``; and no
group of modules imports each other in a loop. A new module must be given a layer here.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("flows", "pipeline", "kernels", "storage", "subsample")

# Bottom first. A module's layer is that of the longest prefix listed for it.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("storage and kernels", ("storage", "kernels")),
    ("pipeline basics", ("pipeline", "pipeline.registry", "pipeline.metrics", "pipeline.pictures")),
    ("GAN library", ("pipeline.gan",)),
    ("stage configs", ("pipeline.config",)),
    (
        "data, presets and measures",
        (
            "pipeline.data",
            "pipeline.presets",
            "pipeline.floors",
            "pipeline.fidelity",
            "pipeline.reference_cache",
            "pipeline.extractor_weights",
        ),
    ),
    ("stages", ("pipeline.stages",)),
    ("experiments", ("pipeline.experiments",)),
    ("flows", ("flows",)),
    ("CLI", ("flows.cli", "flows.commands")),  # flows.commands: the CLI's commands, only it imports them
    ("public library", ("subsample",)),  # on top: nothing imports it (tests/test_library.py: nor does it need prefect)
)


def project_modules(root: Path = ROOT) -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            mods[name] = path
    return mods


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for sub in node.body:
                lines.update(range(sub.lineno, (sub.end_lineno or sub.lineno) + 1))
    return lines


def imports(mods: dict[str, Path]) -> dict[str, list[tuple[str, int, bool]]]:
    """module -> [(imported project module, line, runtime?)]: every import statement, at module
    level or inside a function; ``runtime`` is False under ``if TYPE_CHECKING:``."""
    out: dict[str, list[tuple[str, int, bool]]] = defaultdict(list)
    for name, path in mods.items():
        tree = ast.parse(path.read_text(), str(path))
        typing_only = _type_checking_lines(tree)
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = name.split(".") if is_pkg else name.split(".")[:-1]
                    parts = parts[: len(parts) - (node.level - 1)]
                    base = ".".join(parts + ([base] if base else []))
                targets = [f"{base}.{a.name}" for a in node.names] + [base]
            else:
                continue
            seen = set()
            for t in targets:
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if t and t != name and t not in seen:
                    seen.add(t)
                    out[name].append((t, node.lineno, node.lineno not in typing_only))
            # `from pkg import sub` names the submodule: the package itself is not also imported
            if isinstance(node, ast.ImportFrom) and len(seen) > 1:
                out[name] = [
                    e
                    for e in out[name]
                    if not (
                        e[1] == node.lineno
                        and e[0] == (node.module or "")
                        and any(s.startswith(e[0] + ".") for s in seen)
                    )
                ]
    return out


def layer_of(module: str) -> int | None:
    best, depth = None, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (
                (module == p or module.startswith(p + "."))
                and p.count(".") > depth
                and (p != "pipeline" or module == p)
            ):
                best, depth = i, p.count(".")
    return best


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def upward_imports(mods: dict[str, Path]) -> list[str]:
    bad = []
    for name, targets in imports(mods).items():
        for target, line, _ in targets:
            a, b = layer_of(name), layer_of(target)
            if a is not None and b is not None and b > a:
                bad.append(
                    f"{mods[name].relative_to(ROOT)}:{line}: {name} ({LAYERS[a][0]}) imports {target} ({LAYERS[b][0]})"
                )
    return bad


def test_every_module_has_a_layer():
    missing = [m for m in project_modules() if layer_of(m) is None]
    assert not missing, f"give these modules a layer in tests/test_layers.py LAYERS: {missing}"


def test_no_module_imports_one_above_it():
    bad = upward_imports(project_modules())
    assert not bad, (
        "imports against the layers (bottom first: " + " < ".join(n for n, _ in LAYERS) + "):\n" + "\n".join(bad)
    )


def test_no_import_cycle():
    mods = project_modules()
    edges: dict[str, set[str]] = defaultdict(set)
    for name, targets in imports(mods).items():
        edges[name].update(t for t, _, runtime in targets if runtime)
    loops = cycles(edges)
    assert not loops, "modules importing each other in a loop: " + "; ".join(" <-> ".join(c) for c in loops)


def test_the_checks_catch_what_they_are_for(tmp_path):
    """The checker itself: an upward import (even a lazy one) and a loop are found."""
    for pkg in PACKAGES:
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "storage" / "a.py").write_text("def f():\n    from flows import b\n")
    (tmp_path / "flows" / "b.py").write_text("import flows.c\n")
    (tmp_path / "flows" / "c.py").write_text("from flows import b\n")
    mods = project_modules(tmp_path)
    graph = imports(mods)
    assert ("flows.b", 2, True) in graph["storage.a"]
    assert layer_of("storage.a") < layer_of("flows.b")
    edges = {k: {t for t, _, _ in v} for k, v in graph.items()}
    assert cycles(edges) == [["flows.b", "flows.c"]]


@pytest.mark.parametrize(
    "module,layer",
    [
        ("storage.errors", "storage and kernels"),
        ("kernels.resize", "storage and kernels"),
        ("pipeline.gan.trainer", "GAN library"),
        ("pipeline.stages.train", "stages"),
        ("flows.cli", "CLI"),
        ("flows.commands.train", "CLI"),
        ("flows.resolve", "flows"),
        ("flows.train_subsample", "flows"),
        ("pipeline.data.sampler", "data, presets and measures"),
        ("subsample.sampler", "public library"),
    ],
)
def test_layer_names(module, layer):
    assert LAYERS[layer_of(module)][0] == layer

"""The dependency direction of docs/ARCHITECTURE.md holds for every import in the tree (also imports inside
functions): a module imports its own layer and the ones below, never above, and no two packages import
each other; the known exceptions are listed
and must still exist (remove one from the list when its import goes)."""

from __future__ import annotations

import ast

from train_helpers import REPO

LAYERS = {
    "xlbtm.errors": 0, "xlbtm.io": 0, "xlbtm.cli": 0,
    "xlbtm.corpus": 1, "xlbtm.tokenizer": 1, "xlbtm.demo_corpus": 1, "xlbtm.models": 1, "xlbtm.launch": 1,
    "xlbtm.formats": 2, "xlbtm.cluster": 2, "xlbtm.data": 2, "xlbtm.parallel": 2,
    "xlbtm.train": 3, "xlbtm.ensemble": 3,
    "xlbtm.study": 4, "xlbtm.quickstart": 4, "xlbtm.grow": 4,
    "xlbtm.scripts": 5,
}
# (importer, imported): known debts, each to be removed with its import (none today)
KNOWN: set[tuple[str, str]] = set()


def _unit(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] == "xlbtm" and len(parts) > 1:
        return "xlbtm." + parts[1]
    return parts[0] if parts[0] in ("metaseq_ext", "conversion", "tests") else None


def _edges() -> set[tuple[str, str, str]]:
    out = set()
    for root in ("xlbtm", "metaseq_ext"):
        for path in (REPO / root).rglob("*.py"):
            rel = path.relative_to(REPO).with_suffix("")
            src = _unit(".".join(rel.parts)) if rel.parts[0] == "xlbtm" and len(rel.parts) > 1 else rel.parts[0]
            for node in ast.walk(ast.parse(path.read_text())):
                names = [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else \
                    [a.name for a in node.names] if isinstance(node, ast.Import) else []
                for name in names:
                    dst = _unit(name)
                    if dst and dst != src:
                        out.add((src, dst, str(rel)))
    return out


def test_every_import_points_down_the_layers():
    edges = _edges()
    assert all(src in LAYERS or src == "metaseq_ext" for src, _, _ in edges), "a new package: add it to LAYERS"
    bad, seen_known = [], set()
    for src, dst, where in sorted(edges):
        if (src, dst) in KNOWN:
            seen_known.add((src, dst))
            continue
        if dst in ("tests", "conversion"):
            bad.append(f"{where}: the library imports {dst}")
        elif src == "metaseq_ext":
            if dst == "metaseq_ext" or LAYERS.get(dst, 9) > 2:
                bad.append(f"{where}: metaseq_ext reaches up to {dst}")
        elif dst == "metaseq_ext":
            bad.append(f"{where}: {src} imports metaseq_ext (foreign formats depend on xlbtm, not the reverse)")
        elif LAYERS[dst] > LAYERS[src]:
            bad.append(f"{where}: {src} (layer {LAYERS[src]}) imports {dst} (layer {LAYERS[dst]})")
    pairs = {(src, dst) for src, dst, _ in edges}
    bad += [f"{a} and {b} import each other" for a, b in sorted(pairs) if a < b and (b, a) in pairs]
    assert not bad, "\n".join(bad)
    assert seen_known == KNOWN, f"gone, remove from KNOWN and docs/ARCHITECTURE.md: {sorted(KNOWN - seen_known)}"


def test_the_architecture_page_names_every_package():
    page = (REPO / "docs" / "ARCHITECTURE.md").read_text()
    for unit in LAYERS:
        assert f"`{unit}`" in page, unit


def test_xlbtm_command_dispatches_to_the_scripts(capsys):
    """`xlbtm <command>` (the console script in pyproject.toml) is `python -m xlbtm.scripts.<command>`."""
    import tomllib

    from xlbtm.scripts.__main__ import commands, main

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"xlbtm": "xlbtm.scripts.__main__:main"}
    assert {"train_clusterer", "cluster", "train_experts", "consolidate", "eval_ensemble", "quickstart"} <= \
        set(commands())
    assert main(["--help"]) == 0 and "train_experts" in capsys.readouterr().out
    assert main(["nope"]) == 2 and "unknown command 'nope'" in capsys.readouterr().err
    import pytest

    with pytest.raises(SystemExit) as e:  # the same flags and argparse errors as the module
        main(["train-experts", "--run", "debug"])
    assert e.value.code == 2 and "--seed-model" in capsys.readouterr().err


# ------------------------------------------------------------------------------ module-level import graph

def _module_name(path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _xlbtm_modules() -> dict:
    return {_module_name(p): p for p in sorted((REPO / "xlbtm").rglob("*.py"))}


def _imports(path):
    """(import node, imported module names, inside a function?) for every import of the file; `from a.b import c`
    names `a.b.c` where that is a module of xlbtm, else `a.b`."""
    modules = _xlbtm_modules()
    tree = ast.parse(path.read_text())
    out = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                out.append((child, [a.name for a in child.names], in_function))
            elif isinstance(child, ast.ImportFrom):
                assert not child.level, f"{path}:{child.lineno}: relative import"
                out.append((child, [f"{child.module}.{a.name}" if f"{child.module}.{a.name}" in modules
                                    else child.module for a in child.names], in_function))
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(tree, False)
    return out


def _module_graph() -> dict[str, set[str]]:
    """module -> the xlbtm modules it imports, at module level or inside functions alike: a function-level
    import that closes a cycle is a cycle of the design all the same, only deferred to run time."""
    modules = _xlbtm_modules()
    graph = {m: set() for m in modules}
    for m, path in modules.items():
        for _, names, _ in _imports(path):
            for name in names:
                while name and name not in modules:  # `import xlbtm.a.b` of a name inside a module
                    name = name.rpartition(".")[0]
                if name and name != m:
                    graph[m].add(name)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One shortest cycle per strongly connected component of more than one module (Tarjan, then BFS)."""
    index, low, stack, on_stack, comps = {}, {}, [], set(), []

    def strongconnect(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(comp)

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    cycles = []
    for comp in comps:
        start = min(comp)
        prev, frontier = {start: None}, [start]
        while frontier and start not in [w for v in frontier for w in graph[v]]:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v] & comp):
                    if w not in prev:
                        prev[w] = v
                        nxt.append(w)
            frontier = nxt
        last = next(v for v in frontier if start in graph[v])
        path = [last]
        while prev[path[-1]] is not None:
            path.append(prev[path[-1]])
        cycles.append(path[::-1] + [start])
    return cycles


def test_the_cycle_finder_finds_cycles():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"f"}, "f": {"e"}}
    assert sorted(_cycles(g)) == [["a", "b", "c", "a"], ["e", "f", "e"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_between_modules():
    """No two xlbtm modules depend on each other, directly or around a loop, counting imports inside
    functions too (a module that other modules need helpers from keeps the helpers in a module of their own,
    e.g. ensemble.evaluate imports scoring.scoring_window and mixing.hard_log_weights, it does not export them)."""
    cycles = _cycles(_module_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


"""The dependency direction of docs/ARCHITECTURE.md holds for every import in the tree (also imports inside
functions): a module imports its own layer and the ones below, never above, and no two packages import
each other; the known exceptions are listed
and must still exist (remove one from the list when its import goes)."""

from __future__ import annotations

import ast

from train_helpers import REPO

LAYERS = {
    "xlbtm.errors": 0,
    "xlbtm.io": 0,
    "xlbtm.cli": 0,
    "xlbtm.config": 0,
    "xlbtm.runtime": 0,
    "xlbtm.corpus": 1,
    "xlbtm.tokenizer": 1,
    "xlbtm.demo_corpus": 1,
    "xlbtm.models": 1,
    "xlbtm.launch": 1,
    "xlbtm.formats": 2,
    "xlbtm.cluster": 2,
    "xlbtm.data": 2,
    "xlbtm.parallel": 2,
    "xlbtm.train": 3,
    "xlbtm.ensemble": 3,
    "xlbtm.study": 4,
    "xlbtm.quickstart": 4,
    "xlbtm.grow": 4,
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
                names = (
                    [node.module]
                    if isinstance(node, ast.ImportFrom) and node.module and not node.level
                    else [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else []
                )
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
    assert {"train_clusterer", "cluster", "train_experts", "consolidate", "eval_ensemble", "quickstart"} <= set(
        commands()
    )
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
                out.append(
                    (
                        child,
                        [
                            f"{child.module}.{a.name}" if f"{child.module}.{a.name}" in modules else child.module
                            for a in child.names
                        ],
                        in_function,
                    )
                )
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


# ------------------------------------------------------------------------------ imports at module top

# Function-level imports allowed, by top-level package, and why. Everything else is imported at module top.
LAZY_PACKAGES = {
    # heavy: seconds of import (torch initialises CUDA), kept out of `xlbtm <cmd> --help`, of the cluster
    # command (its test checks that torch, transformers and sklearn stay unimported) and of package imports
    # ("importing the package is cheap", xlbtm/__init__.py)
    "torch": "heavy",
    "numpy": "heavy",
    "scipy": "heavy",
    "sklearn": "heavy",
    "transformers": "heavy",
    "safetensors": "heavy (imports torch / numpy)",
    "sentencepiece": "heavy",
    "tokenizers": "heavy",
    "threadpoolctl": "with sklearn",
    "lang2vec": "heavy (reads its feature tables at import)",
    "submitit": "launching only; a local run never needs it",
    "matplotlib": "plots only; ~0.5 s of import",
    # optional extras (pyproject.toml): a missing extra fails the feature that needs it, not the import
    "lm_eval": "extra `eval`",
    "tensorboard": "extra `tensorboard`",
    "wandb": "not a dependency",
}
# (file, xlbtm module) imported inside a function on purpose: a light module that must stay light (it is on
# the import path of a command's --help or of the cluster command) reaches a heavy one only when it runs.
_HELP_PATH = (
    "the study pipeline is on the import path of `xlbtm quickstart --help` and `xlbtm scaling-study "
    "--help` (they import xlbtm.quickstart / xlbtm.study.scaling for its config dataclass): "
)
LAZY_XLBTM: dict[tuple[str, str], str] = {
    ("xlbtm/study/pipeline.py", "xlbtm.train.experts"): _HELP_PATH + "training imports torch",
    ("xlbtm/study/pipeline.py", "xlbtm.train.plan"): _HELP_PATH + "the plan reads seed models (torch)",
    ("xlbtm/study/pipeline.py", "xlbtm.ensemble.consolidate"): _HELP_PATH + "consolidation imports torch",
    ("xlbtm/study/pipeline.py", "xlbtm.ensemble.evaluate"): _HELP_PATH + "evaluation imports torch",
    ("xlbtm/study/pipeline.py", "xlbtm.cluster.train"): _HELP_PATH + "clusterer training imports numpy, sklearn",
    ("xlbtm/study/pipeline.py", "xlbtm.data.dataset"): _HELP_PATH + "datasets import numpy",
    ("xlbtm/study/pipeline.py", "xlbtm.formats.binarized"): _HELP_PATH + "binarized formats import numpy",
    ("xlbtm/study/pipeline.py", "xlbtm.formats.clusterer"): _HELP_PATH + "the clusterer format imports numpy",
    ("xlbtm/study/scaling.py", "xlbtm.data.dataset"): _HELP_PATH + "datasets import numpy",
}
# Files whose every function-level import is allowed: the commands import the library when they run, after
# parsing their arguments, so `--help` and usage errors answer at once.
LAZY_FILES = {"xlbtm/scripts/": "commands"}
# (ensemble, train, study, formats, grow and quickstart are moved over; these files are what is left.)
CEILINGS: dict[str, int] = {
    "xlbtm/cli.py": 1,
    "xlbtm/cluster/artifact.py": 8,
    "xlbtm/cluster/assign.py": 15,
    "xlbtm/cluster/extend.py": 7,
    "xlbtm/cluster/featurize.py": 5,
    "xlbtm/cluster/kmeans.py": 1,
    "xlbtm/cluster/train.py": 14,
    "xlbtm/corpus/index.py": 1,
    "xlbtm/data/dataset.py": 3,
    "xlbtm/demo_corpus.py": 2,
    "xlbtm/io.py": 0,
    "xlbtm/models/__init__.py": 2,
    "xlbtm/models/load.py": 2,
    "xlbtm/models/presets.py": 1,
    "xlbtm/models/safe_load.py": 1,
    "xlbtm/parallel/checkpoint.py": 1,
    "xlbtm/parallel/parallelize.py": 1,
    "xlbtm/tokenizer.py": 6,
}


def _function_level_debts() -> tuple[dict[str, list[str]], set[tuple[str, str]]]:
    """file -> its function-level imports that are not allowed ("line: module"); the LAZY_XLBTM pairs seen.
    A function-level import repeating one at module top is never allowed; standard-library ones are (a
    function that needs `fcntl` or `pickle` may say so where it does)."""
    import sys

    debts, seen = {}, set()
    for path in _xlbtm_modules().values():
        rel = str(path.relative_to(REPO))
        imports = _imports(path)
        top = {ast.unparse(node) for node, _, in_function in imports if not in_function}
        for node, names, in_function in imports:
            if not in_function or any(rel.startswith(prefix) for prefix in LAZY_FILES):
                continue
            for name in sorted(set(names)):
                root = name.split(".")[0]
                if (rel, name) in LAZY_XLBTM and ast.unparse(node) not in top:
                    seen.add((rel, name))
                elif (root in LAZY_PACKAGES or root in sys.stdlib_module_names) and ast.unparse(node) not in top:
                    pass
                else:
                    debts.setdefault(rel, []).append(f"{node.lineno}: {name}")
    return debts, seen


def test_imports_are_at_module_top():
    debts, seen = _function_level_debts()
    bad = [
        f"{f}: {len(d)} function-level imports, at most {CEILINGS.get(f, 0)} allowed (move them to the top; "
        f"a cycle that forbids it is fixed by moving the shared code into a module of its own): {d}"
        for f, d in sorted(debts.items())
        if len(d) > CEILINGS.get(f, 0)
    ]
    bad += [
        f"{f}: {len(debts.get(f, []))} function-level imports now, below its ceiling {n}: lower CEILINGS"
        for f, n in sorted(CEILINGS.items())
        if len(debts.get(f, [])) < n
    ]
    bad += [
        f"LAZY_XLBTM {pair}: no such function-level import any more, remove the entry"
        for pair in sorted(set(LAZY_XLBTM) - seen)
    ]
    assert not bad, "\n".join(bad)


def test_commands_import_nothing_heavy_before_they_run():
    """`xlbtm <cmd> --help` imports the command's module only: none of them imports torch & co. at module
    level, directly or through the library (what LAZY_XLBTM protects)."""
    import subprocess
    import sys

    commands = sorted(f"xlbtm.scripts.{p.stem}" for p in (REPO / "xlbtm" / "scripts").glob("*.py"))
    heavy = sorted(LAZY_PACKAGES)
    code = (
        f"import importlib, sys\nfor m in {commands!r}: importlib.import_module(m)\n"
        f"print(sorted(m for m in {heavy!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]", out.stdout

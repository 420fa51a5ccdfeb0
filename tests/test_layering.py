"""The core's floors, enforced: every module's imports (module level and inside functions) are
read from its source, mapped to floors, and checked against the rule in docs/ARCHITECTURE.md.
A sideways or upward import, an import of a forbidden third-party package (torch in the
torch-free floors, PyAV outside media) or an import cycle fails the test with the offending
modules named."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Source folders and the package each installs as (pyproject's package-dir).
SOURCES = {"jedi_deploy": ROOT / "jedi_deploy", "jedi_deploy.train": ROOT / "train",
           "jedi_deploy.export": ROOT / "export", "jedi_deploy.serve": ROOT / "serve"}
#: floor -> the floors it may import (itself included).
ALLOWED = {
    "contracts": {"contracts"},
    "common": {"contracts", "common"},
    "media": {"contracts", "media"},
    "runners": {"contracts", "runners"},
    "models": {"contracts", "models"},
    "train": {"contracts", "common", "media", "models", "train"},
    "export": {"contracts", "common", "media", "runners", "models", "export"},
    "serve": {"contracts", "common", "media", "runners", "serve"},
    "app": {"contracts", "common", "media", "runners", "models", "train", "export", "serve", "app", "root"},
    "root": {"contracts", "root"},  # jedi_deploy/__init__.py: the lazy table, errors only at import
}
#: floor -> third-party packages it must never import (the rest is free).
FORBIDDEN = {
    "contracts": {"torch", "torchvision", "transformers", "av", "onnxruntime", "openvino", "tensorrt", "click"},
    "common": {"torch", "torchvision", "transformers", "av"},
    "media": {"torch", "torchvision", "transformers", "onnxruntime", "openvino", "tensorrt"},
    "serve": {"torch", "torchvision", "transformers"},
    "runners": {"torchvision", "transformers", "av"},
    "models": {"av", "onnxruntime", "openvino", "tensorrt"},
}
#: Runner modules that may use torch (never imported by serve, checked below).
TORCH_RUNNERS = {"jedi_deploy.runners.eager", "jedi_deploy.runners.tensorrt"}


def module_names() -> dict[str, Path]:
    mods = {}
    for pkg, folder in SOURCES.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("").parts
            if pkg == "jedi_deploy" and rel[0] in ("train", "export", "serve"):
                continue
            parts = list(rel[:-1]) if rel[-1] == "__init__" else list(rel)
            mods[".".join([pkg, *parts])] = path
    return mods


def imports_of(name: str, path: Path, known: set[str]) -> tuple[set[str], set[str]]:
    """(jedi_deploy modules, top-level third-party packages) that ``path`` imports anywhere."""
    tree = ast.parse(path.read_text())
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    ours, theirs = set(), set()

    def add(module: str, names=()):
        if not module.startswith("jedi_deploy"):
            theirs.add(module.split(".")[0])
            return
        hits = [f"{module}.{n}" for n in names if f"{module}.{n}" in known]
        ours.update(hits or [module])

    for node in walk_library_code(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            add(module, [a.name for a in node.names])
        elif isinstance(node, ast.Import):
            for a in node.names:
                add(a.name)
    return ours, theirs


def walk_library_code(tree: ast.AST):
    """Every node except those under ``if __name__ == "__main__":`` - a module's script entry
    (``python -m jedi_deploy.serve.infer``), which runs as a program on top of the package, not
    as part of the library (nothing imports it)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
                and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__"):
            continue
        yield node
        stack.extend(ast.iter_child_nodes(node))


def floor(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in ("__main__",):
        return "root"
    return parts[1] if parts[1] in ALLOWED else "root"


def graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    mods = module_names()
    edges, third = {}, {}
    for name, path in mods.items():
        ours, theirs = imports_of(name, path, set(mods))
        edges[name] = {m for m in ours if m != name}
        third[name] = theirs
    return edges, third


def violations(edges: dict[str, set[str]], third: dict[str, set[str]]) -> list[str]:
    """Every broken rule, one line each: floor crossings, forbidden packages, cycles."""
    out = []
    for a, targets in sorted(edges.items()):
        fa = floor(a)
        for b in sorted(targets):
            fb = floor(b)
            if fb not in ALLOWED[fa] and not (fa == "root" and a == "jedi_deploy.__main__"):
                out.append(f"{a} ({fa}) imports {b} ({fb})")
            if fa == "serve" and b in TORCH_RUNNERS:
                out.append(f"{a} (serve) imports the torch runner {b}")
        for pkg in sorted(third.get(a, set()) & FORBIDDEN.get(fa, set())):
            if not (fa == "runners" and a in TORCH_RUNNERS and pkg == "torch"):
                out.append(f"{a} ({fa}) imports {pkg}")
    out += [f"import cycle: {' -> '.join(c)}" for c in cycles(edges)]
    return out


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in edges:
                continue
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
                out.append(sorted(comp) + [sorted(comp)[0]])

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_every_module_respects_the_floors():
    edges, third = graph()
    assert len(edges) > 60  # the walk found the tree
    problems = violations(edges, third)
    assert not problems, "layering broken:\n" + "\n".join(problems)


@pytest.mark.parametrize("edge, expected", [
    (("jedi_deploy.export.quantize", "jedi_deploy.serve.runtime"), "(export) imports jedi_deploy.serve.runtime (serve)"),
    (("jedi_deploy.serve.runtime", "jedi_deploy.models.registry"), "(serve) imports jedi_deploy.models.registry"),
    (("jedi_deploy.contracts.header", "jedi_deploy.media.decode"), "(contracts) imports jedi_deploy.media.decode"),
    (("jedi_deploy.media.decode", "jedi_deploy.media.datasets"), "import cycle"),
])
def test_a_planted_sideways_import_or_cycle_is_caught(edge, expected):
    """The checker itself can fail: plant one bad edge in the real graph."""
    edges, third = graph()
    a, b = edge
    if expected == "import cycle":
        edges[b] = edges[b] | {a}
        edges[a] = edges[a] | {b}
    else:
        edges[a] = edges[a] | {b}
    assert any(expected in v for v in violations(edges, third))


def test_a_planted_torch_import_in_a_torch_free_floor_is_caught():
    edges, third = graph()
    third["jedi_deploy.contracts.model_card"] = third["jedi_deploy.contracts.model_card"] | {"torch"}
    third["jedi_deploy.serve.server"] = third["jedi_deploy.serve.server"] | {"torch"}
    found = violations(edges, third)
    assert "jedi_deploy.contracts.model_card (contracts) imports torch" in found
    assert "jedi_deploy.serve.server (serve) imports torch" in found

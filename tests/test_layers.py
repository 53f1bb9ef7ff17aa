"""The package's layers (docs/design.md#layers): every import of a fastxent module, at module
level or inside a function, goes to the same layer or one below it, and the imports between
modules have no cycle."""

import ast
import pathlib

import pytest

import fastxent

PACKAGE = pathlib.Path(fastxent.__file__).parent

#: lowest first; a module belongs to the first entry that is its name or a package above it
LAYERS = [
    ("fastxent.config", "fastxent.core"),
    ("fastxent.kernels",),
    ("fastxent.dispatch",),
    ("fastxent.losses",),
    ("fastxent.evaluation", "fastxent.dask", "fastxent.torch", "fastxent.transformers"),
    ("fastxent",),  # the public API re-exports the layers below it
    ("fastxent.bench", "fastxent.cli", "fastxent.__main__"),
]


def _modules():
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def layer(name):
    for rank, prefixes in enumerate(LAYERS):
        if any(name == p or name.startswith(p + ".") for p in prefixes if p != "fastxent"):
            return rank
    assert name == "fastxent", name
    return LAYERS.index(("fastxent",))


def _imports(name, path):
    """The fastxent modules ``name`` imports (the module itself when a name is one of its
    attributes)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "fastxent"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            elif (node.module or "").split(".")[0] == "fastxent":
                module = node.module
            else:
                continue
            for a in node.names:
                sub = f"{module}.{a.name}"
                found.add(sub if sub in MODULES else module)
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def test_every_module_has_a_layer():
    assert {name: layer(name) for name in MODULES}


def test_no_module_imports_a_higher_layer():
    upward = sorted(f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)})"
                    for a, deps in GRAPH.items() for b in deps
                    if layer(b) > layer(a) and not a.startswith(b + "."))
    assert not upward, "\n".join(upward)


def test_imports_have_no_cycle():
    # a package importing its own submodules is not a cycle: the package is their container
    graph = {a: {b for b in deps if not b.startswith(a + ".")} for a, deps in GRAPH.items()}
    state, stack, cycles = {}, [], []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name)
    assert not cycles, "\n".join(cycles)


@pytest.mark.parametrize("kernel_module", sorted(m for m in MODULES if layer(m) <= 1))
def test_kernels_and_core_never_import_the_layers_above(kernel_module):
    assert all(layer(b) <= 1 for b in GRAPH[kernel_module]), GRAPH[kernel_module]

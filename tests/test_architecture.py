"""The package's architecture, enforced: layers import only downwards, no import cycles, each constant defined once.

Every module's imports are read with `ast` (nothing is imported), at module level, inside
functions and under `if TYPE_CHECKING:`. The pipeline runs bottom to top: core vocabulary
and helpers, the model, datasets, the mergeable reductions, the index folder, the collector,
the analyses on an index, explanations, widgets, and the applications (command line, demo,
the package's own namespace). A module may import its own layer and the layers below it.
An upward import is allowed only inside a function or under TYPE_CHECKING (it then runs
only when called, or never) and only when listed in ALLOWED_UPWARD with its reason: the
convenience facades that let a notebook write `session.collect(data)` or `index.categories()`.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

import neuronwidgets
from neuronwidgets import constants

PACKAGE = Path(neuronwidgets.__file__).resolve().parent
ROOT = "neuronwidgets"

#: Bottom to top. A module's layer is that of its top-level name under neuronwidgets/
#: ("__init__" is the package's own namespace, "__main__" `python -m neuronwidgets`).
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("constants", "checks")),  # the shared vocabulary and argument checks: import nothing of the package
    ("records", ("records",)),  # ActivationRecord, the unit explainers read
    ("render", ("render",)),  # images: patch grids, exemplars, heat maps
    ("llm", ("llm",)),  # the chat client, its cache and message parts
    ("model", ("model",)),  # Session, loading, encoding, Trace, inputs (load_image), family adapters
    ("data", ("datasets", "toy")),  # samples (they load images with model.inputs); the bundled toy model and its training
    ("reduce", ("reduce",)),  # mergeable per-layer state: moments, top-k, codes, random set
    ("store", ("store",)),  # the index folder: layout, codec, writes, reads, NeuronIndex, merge
    ("collect", ("collect",)),  # the collector: runner, hook, manifest, distributed
    ("analysis", ("categorize", "decode", "features", "interventions")),  # analyses of a model or an index
    ("explain", ("explain",)),  # explainers, simulators, scoring
    ("widgets", ("widgets",)),  # the notebook widgets
    ("app", ("cli", "demo", "__main__", "__init__")),  # the applications and the public namespace
]

#: Upward imports that are allowed: (importer, imported, kind, why). kind is "function" (an
#: import inside a function body) or "type" (under `if TYPE_CHECKING:`, for annotations only).
#: A module-level upward import is never allowed. An entry no import uses any more fails the
#: test: take it out.
ALLOWED_UPWARD: list[tuple[str, str, str, str]] = [
    ("neuronwidgets.model.session", "neuronwidgets.collect.runner", "function",
     "Session.collect(data): the notebook's one-line facade over collect(session, data)"),
    ("neuronwidgets.model.session", "neuronwidgets.toy", "function",
     "Session.toy(): finds the bundled weights' folder (the toy package trains on datasets, a layer up)"),
    ("neuronwidgets.model.session", "neuronwidgets.store.index", "type",
     "Session.collect's return annotation (NeuronIndex)"),
    ("neuronwidgets.model.session", "neuronwidgets.datasets.base", "type",
     "Session.collect's dataset annotation (Sample)"),
    ("neuronwidgets.store.index", "neuronwidgets.categorize", "function",
     "NeuronIndex.categories() / category_summary() / category_chart() / category_figure(): facades over categorize"),
]


# --- reading the imports ------------------------------------------------------------------------
def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES: dict[str, Path] = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


@dataclass(frozen=True)
class Import:
    importer: str
    target: str  # the package's module this names (a `from pkg import name` of a submodule: the submodule)
    kind: str  # "module" (runs on import), "function" (runs when called) or "type" (under TYPE_CHECKING: never runs)
    line: int
    resolved: bool  # False: the import names a module of the package that does not exist


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> list[tuple[str, bool]]:
    """The package's modules an import statement names, each with whether it exists."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
        return [(n, n in MODULES) for n in names if n.split(".")[0] == ROOT]
    if node.level:  # relative: from the importer's package
        base = module.split(".") if MODULES[module].name == "__init__.py" else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        prefix = ".".join(base + ([node.module] if node.module else []))
    else:
        prefix = node.module or ""
    if prefix.split(".")[0] != ROOT:
        return []
    out = []
    for alias in node.names:
        sub = f"{prefix}.{alias.name}"
        out.append((sub, True) if sub in MODULES else (prefix, prefix in MODULES))
    return out


def _imports(module: str) -> list[Import]:
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"), filename=str(MODULES[module]))
    found: list[Import] = []

    def visit(node: ast.AST, kind: str) -> None:
        for child in ast.iter_child_nodes(node):
            inner = kind
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                inner = "function" if kind == "module" else kind
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.extend(Import(module, t, kind, child.lineno, ok) for t, ok in _targets(module, child))
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:
                    visit(ast.Module(body=[stmt], type_ignores=[]), "type")
                for stmt in child.orelse:
                    visit(ast.Module(body=[stmt], type_ignores=[]), kind)
                continue
            visit(child, inner)

    visit(tree, "module")
    return found


ALL_IMPORTS: list[Import] = [imp for m in MODULES for imp in _imports(m)]


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


LAYER_OF = {name: i for i, (_, names) in enumerate(LAYERS) for name in names}


def _where(imp: Import) -> str:
    return f"{MODULES[imp.importer].relative_to(PACKAGE.parent)}:{imp.line}"


# --- the tests ------------------------------------------------------------------------------
def test_the_scan_sees_the_package():
    """A sanity check of the reader itself: known imports of each kind are found."""
    assert len(MODULES) > 50
    kinds = {(i.importer, i.target): i.kind for i in ALL_IMPORTS}
    assert kinds[("neuronwidgets.store.merge", "neuronwidgets.store.index")] == "module"
    assert kinds[("neuronwidgets.store.index", "neuronwidgets.categorize")] == "function"
    assert kinds[("neuronwidgets.explain.scoring", "neuronwidgets.explain.base")] == "type"
    assert kinds[("neuronwidgets.explain.baseline", "neuronwidgets.explain.formula")] == "module"  # from pkg import submodule


def test_every_module_has_a_layer():
    missing = sorted({_top(m) for m in MODULES} - set(LAYER_OF))
    assert not missing, f"give these top-level modules of neuronwidgets a place in LAYERS: {missing}"


def test_every_import_of_the_package_names_a_module_that_exists():
    broken = [f"{_where(i)} imports {i.target}" for i in ALL_IMPORTS if not i.resolved]
    assert not broken, "imports of modules that do not exist (moved?):\n" + "\n".join(broken)


def test_lower_layers_never_import_higher_ones():
    allowed = {(a, b, kind): why for a, b, kind, why in ALLOWED_UPWARD}
    used, wrong = set(), []
    for imp in ALL_IMPORTS:
        low, high = LAYER_OF.get(_top(imp.importer)), LAYER_OF.get(_top(imp.target))
        if low is None or high is None or high <= low:
            continue
        key = (imp.importer, imp.target, imp.kind)
        if imp.kind != "module" and key in allowed:
            used.add(key)
            continue
        how = {"module": "at module level", "function": "inside a function", "type": "under TYPE_CHECKING"}[imp.kind]
        wrong.append(f"{_where(imp)}: {imp.importer} ({LAYERS[low][0]} layer) imports {imp.target} "
                     f"({LAYERS[high][0]} layer) {how}")
    assert not wrong, ("imports up the layers (move the code down, pass the object in, or, for a facade, import inside "
                       "the function and list it in ALLOWED_UPWARD with why):\n" + "\n".join(wrong))
    stale = sorted(set(allowed) - used)
    assert not stale, f"ALLOWED_UPWARD entries no import uses any more (take them out): {stale}"


def test_allowed_upward_imports_say_why():
    for importer, imported, kind, why in ALLOWED_UPWARD:
        assert importer in MODULES and imported in MODULES, (importer, imported)
        assert kind in ("function", "type") and len(why) > 20, (importer, imported)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (or a module importing itself), by Tarjan."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.get(v, ()):
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def _module_level_graph() -> dict[str, set[str]]:
    """Who imports whom while being imported: module-level imports, plus the packages a target's import runs.

    Importing neuronwidgets.explain.data runs neuronwidgets/explain/__init__.py first, unless
    the importer is inside that package (it is then being imported already). The root package
    is left out: every module's import starts there.
    """
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for imp in ALL_IMPORTS:
        if imp.kind != "module" or not imp.resolved:
            continue
        parts = imp.target.split(".")
        for n in range(2, len(parts) + 1):
            target = ".".join(parts[:n])
            is_own_package = imp.importer == target or imp.importer.startswith(target + ".")
            if target in MODULES and target != imp.importer and (n == len(parts) or not is_own_package):
                graph[imp.importer].add(target)
    return graph


def test_no_import_cycle_at_module_level():
    cycles = _cycles(_module_level_graph())
    assert not cycles, "modules that import each other at module level (one side must import inside a function, or move):\n" + \
        "\n".join(" <-> ".join(c) for c in cycles)


def test_the_cycle_finder_finds_cycles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"a"}}) == [["a"]] and _cycles({"a": {"b"}, "b": set()}) == []


# --- one copy of each constant -------------------------------------------------------------------
#: Copies of a constants.py value in modules whose owners are moving them to constants.py:
#: (file under neuronwidgets/, constant). An entry whose copy is gone fails the test: take it out.
KNOWN_COPIES: set[tuple[str, str]] = {
    ("explain/concept.py", "CATEGORY_MODALITY"),  # _modality(): {"visual": "image", "text": "text"}.get(...)
    ("widgets/card.py", "MODALITIES"),  # for modality in ("image", "text")
}

SHARED = {name: value for name, value in vars(constants).items()
          if name.isupper() and isinstance(value, (tuple, dict, str))}


def _same(literal: object, value: object) -> bool:
    if isinstance(value, tuple) and isinstance(literal, (tuple, list)):
        return tuple(literal) == value
    if isinstance(value, tuple) and isinstance(literal, (set, frozenset)):
        return len(literal) == len(value) and literal == set(value)
    return type(literal) is type(value) and literal == value


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                ids.add(id(first.value))
    return ids


def _copies(path: Path) -> list[tuple[str, int, str]]:
    """(constant, line, how) for each place in `path` that defines a constants.py value again."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docs = _docstrings(tree)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            value = node.value
            for t in targets:
                if isinstance(t, ast.Name) and t.id in SHARED and not isinstance(value, (ast.Name, ast.Attribute)):
                    out.append((t.id, node.lineno, f"assigns {t.id} again"))
        if isinstance(node, (ast.Tuple, ast.List, ast.Set, ast.Dict)) or (
                isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs):
            try:
                literal = ast.literal_eval(node)
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                continue
            for name, value in SHARED.items():
                if _same(literal, value):
                    out.append((name, node.lineno, f"spells out {name}'s value {value!r}"))
    return out


def test_each_constant_is_defined_only_in_constants_py():
    assert {"MODALITIES", "SITES", "CATEGORIES", "LABELS", "PROMPT_TEMPLATE", "CATEGORY_MODALITY"} <= set(SHARED)
    found, seen = [], set()
    for module, path in MODULES.items():
        if module == "neuronwidgets.constants":
            continue
        rel = path.relative_to(PACKAGE).as_posix()
        for name, line, how in _copies(path):
            if (rel, name) in KNOWN_COPIES:
                seen.add((rel, name))
                continue
            found.append(f"neuronwidgets/{rel}:{line} {how}")
    assert not found, "import these from neuronwidgets.constants instead:\n" + "\n".join(sorted(set(found)))
    stale = sorted(KNOWN_COPIES - seen)
    assert not stale, f"KNOWN_COPIES entries whose copy is gone (take them out): {stale}"


@pytest.mark.parametrize("source, expected", [
    ('MODALITIES = ("image", "text")', ["MODALITIES"]),
    ('for m in ["image", "text"]: pass', ["MODALITIES"]),
    ('t = "USER: <image>\\n{question} ASSISTANT:"', ["PROMPT_TEMPLATE"]),
    ('from neuronwidgets.constants import SITES\nSITES2 = SITES', []),
    ('x = ("image", "text", "both")', []),
    ('def f():\n    """Could you describe the image?"""', []),
])
def test_the_copy_finder(tmp_path, source, expected):
    f = tmp_path / "m.py"
    f.write_text(source)
    assert sorted({name for name, _, _ in _copies(f)}) == expected


#: Where untyped public functions are accepted: the toy's training script and builders (tools that make the bundled
#: weights and the tiny test models, not API a user calls).
UNTYPED_OK = ("toy/",)


def _public_functions(tree: ast.Module):
    """Module-level public functions and the public methods (and __init__) of module-level classes; nested helpers are not API."""
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
            yield node.name, node
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and (not item.name.startswith("_") or item.name == "__init__"):
                    yield f"{node.name}.{item.name}", item


def test_the_public_api_is_typed():
    """Every public function and method says what it takes and returns (the issue found 42% without, on the domain objects)."""
    package = Path(neuronwidgets.__file__).parent
    untyped = []
    for file in sorted(package.rglob("*.py")):
        rel = file.relative_to(package).as_posix()
        if rel.startswith(UNTYPED_OK):
            continue
        for name, fn in _public_functions(ast.parse(file.read_text())):
            a = fn.args
            params = [p for p in a.posonlyargs + a.args + a.kwonlyargs if p.arg not in ("self", "cls")]
            params += [p for p in (a.vararg, a.kwarg) if p is not None]
            missing = [p.arg for p in params if p.annotation is None]
            if fn.returns is None and fn.name != "__init__":
                missing.append("return")
            if missing:
                untyped.append(f"neuronwidgets/{rel}:{fn.lineno} {name}: {', '.join(missing)}")
    assert not untyped, "add type hints:\n" + "\n".join(untyped)

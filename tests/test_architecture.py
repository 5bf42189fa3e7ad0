"""The package's shape (issue 17): no import cycles, no module over 400 lines, a thin BoostedModel.

Import cycles count module-level imports only: what runs when a module is imported, i.e. the module's
body and the bodies of its top-level classes, `if`, `try` and `with` blocks. Imports inside functions
are lazy (they run on first call, when every module they name can finish importing) and may point
anywhere; `if TYPE_CHECKING:` blocks never run; `import_module("...")` strings (the registries' lazy
`module:attr` entries) are not imports at all. Relative imports are resolved against the importing
module. Importing `a.b.c` also runs the `__init__` of `a.b` and `a` unless the importer already lives
inside them (then they are already being imported), so those count as edges too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import mmad_boost

PACKAGE = Path(mmad_boost.__file__).resolve().parent
MAX_LINES = 400
MAX_BOOSTED_LINES = 150


def module_files(package: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under `package` (a package's name is its __init__)."""
    out = {}
    for f in sorted(package.rglob("*.py")):
        parts = f.relative_to(package.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def module_level_imports(tree: ast.Module):
    """The Import/ImportFrom nodes that run when the module is imported (see the module docstring)."""
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue  # lazy
        elif isinstance(node, ast.If):
            todo.extend(node.orelse if _is_type_checking(node.test) else node.body + node.orelse)
        elif isinstance(node, ast.Try) or type(node).__name__ == "TryStar":
            todo.extend(node.body + node.orelse + node.finalbody + [s for h in node.handlers for s in h.body])
        elif isinstance(node, (ast.ClassDef, ast.With, ast.For, ast.While)):
            todo.extend(node.body + getattr(node, "orelse", []))


def import_graph(package: Path) -> dict[str, set[str]]:
    """Module -> the package's modules its import runs first."""
    files = module_files(package)
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, f in files.items():
        is_pkg = f.name == "__init__.py"
        here = name.split(".") if is_pkg else name.split(".")[:-1]  # the package relative imports start from
        inside = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 2)}  # itself and its parents
        for node in module_level_imports(ast.parse(f.read_text(encoding="utf-8"), str(f))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                if node.level:
                    base = here[: len(here) - node.level + 1] if node.level > 1 else here
                    stem = ".".join(base + ([node.module] if node.module else []))
                else:
                    stem = node.module or ""
                targets = [stem] + [f"{stem}.{a.name}" for a in node.names]  # `from pkg import submodule`
            for t in targets:
                parts = t.split(".")
                for i in range(1, len(parts) + 1):  # the target and the packages above it
                    m = ".".join(parts[:i])
                    if m in files and m not in inside:
                        graph[name].add(m)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                return path[path.index(n) :] + [n]
            if n not in state and (c := visit(n)):
                return c
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (c := visit(m)):
            return c
    return None


def test_no_import_cycles():
    graph = import_graph(PACKAGE)
    assert len(graph) > 50 and graph["mmad_boost"], "the package's modules were not found"
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle (module-level imports): " + " -> ".join(cycle)


def test_no_module_over_400_lines():
    long = {name: n for name, f in module_files(PACKAGE).items() if (n := len(f.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them along a real seam): " + ", ".join(f"{m} ({n})" for m, n in sorted(long.items()))


def test_boosted_model_is_thin():
    found = []
    for name, f in module_files(PACKAGE).items():
        for node in ast.parse(f.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.ClassDef) and node.name == "BoostedModel":
                found.append((name, node.end_lineno - node.lineno + 1))
    assert len(found) == 1, f"BoostedModel defined {len(found)} times: {found}"
    name, lines = found[0]
    assert lines < MAX_BOOSTED_LINES, f"BoostedModel ({name}) is {lines} lines; compose it of small parts (under {MAX_BOOSTED_LINES})"


def test_docs_architecture_names_every_module():
    """docs/architecture.md's table has a row per folder naming each of its modules, and names no module that is gone."""
    import re

    doc = (Path(__file__).resolve().parents[1] / "docs" / "architecture.md").read_text(encoding="utf-8")
    rows = {}
    for line in doc.splitlines():
        m = re.match(r"\| (?:`(\w+)/`|\(root\)) \|", line)
        if m:
            rows[m.group(1) or ""] = set(re.findall(r"`(\w+)\.py`", line.split("|", 3)[3]))
    have: dict[str, set[str]] = {}
    for f in PACKAGE.rglob("*.py"):
        rel = f.relative_to(PACKAGE)
        if f.stem in ("__init__", "__main__") or rel.parts[0] == "sample":
            continue
        have.setdefault(rel.parts[0] if len(rel.parts) > 1 else "", set()).add(f.stem)
    for folder in sorted(set(rows) | set(have)):
        missing, gone = have.get(folder, set()) - rows.get(folder, set()), rows.get(folder, set()) - have.get(folder, set())
        assert not missing and not gone, f"docs/architecture.md, row {folder or '(root)'}: add {sorted(missing)}, remove {sorted(gone)}"


# -- the checker itself, on a made-up package ------------------------------------------------------------


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        f = tmp_path / "pkg" / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    return tmp_path / "pkg"


def test_checker_finds_relative_and_absolute_cycles(tmp_path):
    pkg = _package(
        tmp_path,
        {
            "__init__.py": "",
            "a.py": "from .sub.b import x\n",
            "sub/__init__.py": "",
            "sub/b.py": "try:\n    from ..c import y\nexcept ImportError:\n    pass\nx = 1\n",
            "c.py": "import pkg.a\ny = 2\n",
        },
    )
    cycle = find_cycle(import_graph(pkg))
    assert cycle is not None and cycle[0] == cycle[-1] and set(cycle) == {"pkg.a", "pkg.sub.b", "pkg.c"}


def test_checker_finds_a_cycle_through_a_package_init(tmp_path):
    pkg = _package(
        tmp_path,
        {
            "__init__.py": "",
            "experts/__init__.py": "from .base import make\n",
            "experts/base.py": "from ..other import helper\nmake = 1\n",
            "other.py": "from .experts import make\nhelper = 2\n",
        },
    )
    assert set(find_cycle(import_graph(pkg)) or ()) == {"pkg.experts", "pkg.experts.base", "pkg.other"}


def test_checker_ignores_lazy_and_type_checking_imports(tmp_path):
    pkg = _package(
        tmp_path,
        {
            "__init__.py": "from .a import f\n",
            "a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import g\ndef f():\n    from .b import g\n    return g\n",
            "b.py": "from .a import f\nfrom . import a\ng = 1\n",
        },
    )
    graph = import_graph(pkg)
    assert graph["pkg.b"] == {"pkg.a"} and graph["pkg.a"] == set() and graph["pkg"] == {"pkg.a"}
    assert find_cycle(graph) is None


# -- the extension points docs/architecture.md names work as it says ---------------------------------


def _registered(registry, name):
    """Leave the process-wide registry as it was after the test."""

    class Undo:
        def __enter__(self):
            return registry

        def __exit__(self, *exc):
            registry._entries.pop(name, None)

    return Undo()


def test_a_model_kind_an_expert_an_encoder_and_an_index_kind_can_be_added():
    import numpy as np
    from PIL import Image

    from mmad_boost.experts import EXPERTS, Expert, create_expert, register_expert
    from mmad_boost.models import FunctionModel, create_model, register_model_kind
    from mmad_boost.models.registry import MODELS
    from mmad_boost.retrieval.encoders import ENCODERS, Encoder, create_encoder
    from mmad_boost.retrieval.store import INDEX_KINDS, VectorStore

    class Level(Expert):
        name = kind = "arch-level"

        def __init__(self, level: float = 0.0):
            super().__init__()
            self.level = level

        def _predict_map(self, image, mask, templates):
            return np.full((image.height, image.width), self.level, np.float32), self.level

    class Brightness(Encoder):
        name, dim, modalities = "arch-brightness", 2, ("image",)

        def encode_images(self, images):
            v = np.array([[np.asarray(im, np.float32).mean() + 1.0, 1.0] for im in images], np.float32)
            return v / np.linalg.norm(v, axis=1, keepdims=True)

    image = Image.new("RGB", (8, 6), (200, 10, 10))
    with _registered(MODELS, "arch-echo"), _registered(EXPERTS, "arch-level"), _registered(ENCODERS, "arch-brightness"), _registered(INDEX_KINDS, "arch-hnsw8"):
        register_model_kind("arch-echo", lambda rest, **options: FunctionModel(lambda images, text: f"{rest}: {len(images)}"))
        assert create_model("arch-echo:Answer")([image], "Is it good?") == "Answer: 1"

        register_expert("arch-level", Level)
        out = create_expert("arch-level", level="0.25").fit([image]).predict(image)  # the option string converted by the signature
        assert out.map.shape == (6, 8) and out.score == 0.25

        ENCODERS.register("arch-brightness", Brightness)
        vecs = create_encoder("arch-brightness").encode_images([image, Image.new("RGB", (8, 6))])
        assert vecs.shape == (2, 2)

        INDEX_KINDS.register("arch-hnsw8", lambda n, nlist, hnsw_m: "HNSW8,Flat")
        store = VectorStore({"name": "arch-brightness", "dim": 2}, "arch-hnsw8")
        store.add(vecs, [{"i": 0}, {"i": 1}])
        _, ids = store.search(vecs[1:], 1)
        assert ids[0][0] == 1
    from mmad_boost.retrieval import encoders

    encoders._CACHE.pop("arch-brightness", None)  # create_encoder shares instances per name

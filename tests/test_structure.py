"""The house rules that keep the seams clean: imports point one way, each fact has one definition.

Read from the source with `ast` (nothing is imported), so a violation names the file and line.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("invsr_runtime", "invsr_train", "invsr_export", "invsr_serve", "benchmarks")
#: What each package may import from the others (DESIGN.md: "Imports point one way").
MAY_IMPORT = {
    "invsr_runtime": set(),
    "invsr_train": {"invsr_runtime"},
    "invsr_export": {"invsr_train", "invsr_runtime"},
    "invsr_serve": {"invsr_runtime"},
    "benchmarks": {"invsr_runtime", "invsr_train", "invsr_export", "invsr_serve"},
}


def _modules(package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of a package in this checkout."""
    folder = ROOT / package
    out = {}
    for path in sorted(folder.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imports(module: str, path: Path) -> list[tuple[str, int]]:
    """Every module named by an import anywhere in the file (top level, functions, TYPE_CHECKING): (name, line).

    `from X import y` yields X.y as well as X (y may be a submodule); relative imports are resolved.
    """
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((target, node.lineno))
            found += [(f"{target}.{alias.name}", node.lineno) for alias in node.names]
    return found


def _graph(package: str) -> dict[str, set[str]]:
    """Import edges between the modules of one package (imports of a package mean its __init__)."""
    modules = _modules(package)
    return {name: {target for target, _ in _imports(name, path) if target in modules and target != name}
            for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a path (first == last), or None when the graph is acyclic."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_cycle_finder_finds_a_circle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_relative_imports_are_resolved(tmp_path):
    path = tmp_path / "base.py"
    path.write_text("from ..pnp import chain_feeds\nfrom . import cuda\n")
    names = {n for n, _ in _imports("invsr_runtime.backends.base", path)}
    assert {"invsr_runtime.pnp", "invsr_runtime.pnp.chain_feeds", "invsr_runtime.backends.cuda"} <= names


@pytest.mark.parametrize("package", ["invsr_runtime", "invsr_export", "benchmarks"])
def test_no_import_circle(package):
    """Within the package, module imports form no circle (lazy and TYPE_CHECKING imports included)."""
    graph = _graph(package)
    assert graph, f"no modules found for {package}"
    circle = _cycle(graph)
    assert circle is None, f"import circle in {package}: {' -> '.join(circle)}"


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_point_one_way(package):
    """A package imports only the packages below it; invsr_runtime never imports torch."""
    bad = []
    for name, path in _modules(package).items():
        for target, line in _imports(name, path):
            top = target.split(".")[0]
            if top in MAY_IMPORT and top != package and top not in MAY_IMPORT[package]:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
            if package == "invsr_runtime" and top in ("torch", "diffusers", "transformers"):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert not bad, "\n".join(bad)


# ------------------------------------------------------------------------------------ one fact, one place
def _sources() -> dict[Path, ast.Module]:
    return {path: ast.parse(path.read_text(), str(path))
            for package in PACKAGES for path in _modules(package).values()}


def _definitions(name: str) -> list[str]:
    """Where a module-level (or class-level) name is assigned a value, not just imported."""
    where = []
    for path, tree in _sources().items():
        for node in ast.walk(tree):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
                node, ast.AnnAssign) and node.value is not None else []
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                where.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return where


def _string_constants(predicate) -> list[str]:
    """Where string constants (docstrings left out) satisfy `predicate`."""
    where = []
    for path, tree in _sources().items():
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                      and node.body and isinstance(node.body[0], ast.Expr)}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
                    and predicate(node.value)):
                where.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return where


@pytest.mark.parametrize("name, home", [
    ("MAX_STEPS", "invsr_runtime/schedule.py"),
    ("BACKENDS", "invsr_runtime/manifest.py"),
    ("PRECISIONS", "invsr_runtime/manifest.py"),
    ("COMPONENTS", "invsr_runtime/manifest.py"),
    ("STAGES", None),
    ("TENSORRT_MODULES", "invsr_runtime/backends/trt_import.py"),
])
def test_each_fact_is_defined_once(name, home):
    where = _definitions(name)
    assert [w.split(":")[0] for w in where] == ([home] if home else []), where


def test_backend_names_are_listed_once():
    """A list of backend names is spelled only as the manifest's BACKENDS; other lists build on it."""
    names = {"auto", "onnxruntime", "tensorrt", "torch-eager", "torch-fast"}
    where = []
    for path, tree in _sources().items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
                values = {e.value for e in node.elts if isinstance(e, ast.Constant)}
                if {"onnxruntime", "tensorrt"} <= values <= names and len(values) == len(node.elts):
                    where.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert [w.split(":")[0] for w in where] == ["invsr_runtime/manifest.py"], where


def _our_cache_paths() -> list[str]:
    """Where invsr-trt's own cache root is spelled: its variable or folder name, or `.cache / "invsr..."` joins."""
    where = _string_constants(lambda s: s in ("INVSR_TRT_CACHE", "invsr_trt"))
    for path, tree in _sources().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
                parts = {n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
                if ".cache" in parts and any(p.startswith("invsr") for p in parts):
                    where.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return where


def test_one_cache_root():
    """The cache root is spelled in one module; everything else asks `cache_root()` (other tools' caches,
    e.g. Hugging Face's, are theirs)."""
    spelled = _our_cache_paths()
    assert spelled and {w.split(":")[0] for w in spelled} == {"invsr_runtime/cache.py"}, spelled


def test_tensorrt_provenance_has_one_writer_and_one_reader():
    """Only the manifest's TensorRTBuild names the TensorRT record's keys (written once, read once)."""
    keys = {"tensorrt_version", "gpu_compute_capability"}
    where = _string_constants(lambda s: s in keys)
    assert {w.split(":")[0] for w in where} == {"invsr_runtime/manifest.py"}, where


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    from invsr_runtime.cache import cache_root

    monkeypatch.setenv("INVSR_TRT_CACHE", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    monkeypatch.delenv("INVSR_TRT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "invsr_trt"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "invsr_trt"


# ------------------------------------------------------------------------------------ the TileChain contract
CHAIN_CHECK = '''
import numpy as np

from benchmarks.runners.base import RunnerChain
from invsr_runtime.backends.onnxruntime import OnnxRuntimeBackend
from invsr_runtime.backends.tensorrt import TensorRTBackend
from invsr_runtime.pnp import upscale_rgb
from invsr_runtime.schedule import Schedule
from invsr_runtime.tile_chain import TileChain


def accepts(chain: TileChain) -> int:
    return chain.batch


def engines(a: OnnxRuntimeBackend, b: TensorRTBackend, c: RunnerChain) -> None:
    accepts(a)
    accepts(b)
    accepts(c)


class NoBatchRule:
    tile, scale, batch = 16, 4, 2

    def close(self) -> None: ...


def loop(a: OnnxRuntimeBackend, image: np.ndarray, schedule: Schedule, d: NoBatchRule) -> None:
    upscale_rgb(a, image, schedule)
    accepts(d)
'''


def test_a_type_checker_sees_the_tile_chain_contract(tmp_path):
    """mypy accepts the backends and the benchmark's chain as TileChain, and refuses an object without the rule."""
    from mypy import api

    check = tmp_path / "check_chain.py"
    check.write_text(CHAIN_CHECK)
    out, err, status = api.run([str(check), "--follow-imports=silent", "--ignore-missing-imports",
                                "--no-error-summary", "--cache-dir", str(tmp_path / "cache")])
    errors = [line for line in out.splitlines() if ": error:" in line]
    assert status == 1 and len(errors) == 1, out + err
    line = int(errors[0].split("check_chain.py:")[1].split(":")[0])
    assert CHAIN_CHECK.splitlines()[line - 1].strip() == "accepts(d)"
    assert '"NoBatchRule"' in errors[0] and '"TileChain"' in errors[0]
    assert "fixed_batch, run_chain" in out

"""The real TensorRT / CUDA Python APIs as test oracles: signatures, fakes derived from them, the builder table.

The TensorRT lean runtime (`tensorrt_lean_bindings`, TensorRT 11.x) and `cuda.bindings.runtime` install and
import on a CPU machine, so every fake used by the backend tests is built from the real classes: a fake
can only offer members the real class has, and every call it receives must bind to the real signature
(pybind11 docstring signatures for TensorRT, `inspect.signature` for cuda-python's Cython functions).
Never instantiate the real `Runtime` here: without a GPU it is null-backed and the next read segfaults.

The builder is not installable here (PyPI's `tensorrt-cu13-libs` downloads from NVIDIA's host), so its
calls are checked against BUILDER_API below, written from NVIDIA/TensorRT's binding sources.
"""
from __future__ import annotations

import inspect
import re
from typing import Any, Callable
from unittest import mock

#: Every (class, member) a fake was asked for during the tests: what the code really uses.
USED: set[tuple[str, str]] = set()


# --------------------------------------------------------------------------------- signatures
def _split_top(text: str) -> list[str]:
    """Split a parameter list on commas outside brackets ([], (), <>)."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch in "[(<":
            depth += 1
        elif ch in "])>":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur.strip())
    return parts


def pybind_signatures(func: Any, name: str) -> list[inspect.Signature]:
    """The overloads of a pybind11 function, parsed from its docstring ("name(self: T, a: U = d) -> R")."""
    sigs = []
    for line in (getattr(func, "__doc__", None) or "").splitlines():
        m = re.match(rf"^(?:\d+\. )?{re.escape(name)}\((.*)\) -> ", line.strip())
        if not m or m.group(1) == "*args, **kwargs":
            continue
        params = []
        for part in _split_top(m.group(1)):
            pname, _, rest = part.partition(":")
            default = inspect.Parameter.empty
            if " = " in part:
                default = part.split(" = ", 1)[1]
            params.append(inspect.Parameter(pname.strip(), inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default))
        sigs.append(inspect.Signature(params))
    return sigs


def real_signatures(owner: Any, name: str) -> list[inspect.Signature]:
    """Signatures of `owner.name` (a pybind11 method, or a Cython/Python function); [] if not callable."""
    member = getattr(owner, name)
    if isinstance(member, property) or not callable(member):
        return []
    sigs = pybind_signatures(member, name)
    if sigs:
        return sigs
    try:
        return [inspect.signature(member)]
    except (TypeError, ValueError):
        return []


def binds(sigs: list[inspect.Signature], args: tuple, kwargs: dict, method: bool) -> bool:
    """Whether a call with `args` / `kwargs` fits one of the overloads (`method`: the first is self)."""
    lead = (object(),) if method else ()
    for sig in sigs:
        try:
            sig.bind(*lead, *args, **kwargs)
            return True
        except TypeError:
            continue
    return False


def check_call(owner: Any, name: str, args: tuple = (), kwargs: dict | None = None, method: bool = True) -> None:
    """AssertionError unless the real `owner.name` exists and accepts this call."""
    kwargs = kwargs or {}
    label = getattr(owner, "__name__", str(owner))
    assert hasattr(owner, name), f"the real {label} has no {name!r}"
    sigs = real_signatures(owner, name)
    assert sigs, f"the real {label}.{name} is not callable or has no readable signature"
    assert binds(sigs, args, kwargs, method), (
        f"the real {label}.{name}{[str(s) for s in sigs]} does not accept args={args!r} kwargs={kwargs!r}")


# ------------------------------------------------------------------------- fakes from real classes
def _public(obj: Any) -> list[str]:
    return [n for n in dir(type(obj)) if not n.startswith("_")]


def autospec_fake(real_cls: type, impl: Any, **values: Any) -> Any:
    """A `create_autospec(real_cls, instance=True, spec_set=True)` mock whose methods run `impl`'s.

    Every public method of `impl` must exist on the real class (a fake never offers more than the real
    API), every call must bind to the real signature, and `values` set the real class's properties.
    Reading anything the real class lacks raises AttributeError, as the real object would.
    """
    fake = mock.create_autospec(real_cls, instance=True, spec_set=True)
    for name in _public(impl):
        assert hasattr(real_cls, name), f"fake {type(impl).__name__}.{name}: the real {real_cls.__name__} has no such member"
        member = getattr(impl, name)
        if callable(member):
            getattr(fake, name).side_effect = _checked(real_cls, name, member)
    for name, value in values.items():
        assert isinstance(getattr(real_cls, name, None), property), f"the real {real_cls.__name__} has no property {name!r}"
        setattr(fake, name, value)
        USED.add((real_cls.__name__, name))
    return fake


def _checked(owner: Any, name: str, fn: Callable, method: bool = True) -> Callable:
    def call(*args: Any, **kwargs: Any) -> Any:
        check_call(owner, name, args, kwargs, method)
        USED.add((getattr(owner, "__name__", str(owner)), name))
        return fn(*args, **kwargs)

    return call


class ConformingModule:
    """A stand-in for a real module: only names the real module has; functions only where faked.

    Classes and constants (enums, ILogger, nptype, ...) are the real ones; a real function that the
    fake does not implement raises instead of touching CUDA; faked functions are signature-checked.
    """

    def __init__(self, real: Any, impl: Any = None, **members: Any) -> None:
        self._real, self._impl, self._members = real, impl, members
        for name in members:
            assert hasattr(real, name), f"the real {real.__name__} has no {name!r}"
        for name in _public(impl) if impl is not None else ():
            assert hasattr(real, name), f"fake {type(impl).__name__}.{name}: the real {real.__name__} has no such member"

    def __getattr__(self, name: str) -> Any:
        real = self._real
        if not hasattr(real, name):
            raise AttributeError(f"module {real.__name__!r} has no attribute {name!r}")
        USED.add((real.__name__, name))
        if name in self._members:
            return self._members[name]
        attr = getattr(real, name)
        if self._impl is not None and hasattr(type(self._impl), name):
            return _checked(real, name, getattr(self._impl, name), method=False)
        if callable(attr) and not inspect.isclass(attr) and not name.startswith("_") and not name == "nptype":
            raise AssertionError(f"the code called the real {real.__name__}.{name}, which this fake does not provide")
        return attr


# ------------------------------------------------------------------------------ the builder table
#: TensorRT's builder-side Python API as used by invsr_export/tensorrt_build.py, with parameter names.
#: Source: NVIDIA/TensorRT python/src/infer/pyCore.cpp (IBuilder, IBuilderConfig, IOptimizationProfile,
#: ITimingCache, Logger) and python/src/parsers/pyOnnx.cpp (OnnxParser, ParserError), identical at tags
#: v10.1.0 and v11.1 for these members; names cross-checked with `strings` on the tensorrt-cu13-bindings
#: 11.4.0.106 wheel's tensorrt.so. "property" marks read/write properties, "readonly" read-only ones,
#: "enum" the enum values used.
BUILDER_API: dict[str, dict[str, Any]] = {
    "Logger": {"__init__": ["min_severity=WARNING"], "WARNING": "enum"},
    "Builder": {
        "__init__": ["logger"],
        "create_network": ["flags=0"],
        "create_builder_config": [],
        "create_optimization_profile": [],
        "build_serialized_network": ["network", "config"],
    },
    "OnnxParser": {
        "__init__": ["network", "logger"],
        "parse_from_file": ["model"],
        "num_errors": "readonly",
        "get_error": ["index"],
    },
    "ParserError": {"desc": []},
    "IBuilderConfig": {
        "set_memory_pool_limit": ["pool", "pool_size"],
        "builder_optimization_level": "property",
        "set_flag": ["flag"],
        "add_optimization_profile": ["profile"],  # returns the profile index, -1 when the profile is invalid
        "create_timing_cache": ["serialized_timing_cache"],
        "set_timing_cache": ["cache", "ignore_mismatch"],  # returns False when the cache does not match
        "get_timing_cache": [],  # None when no cache is attached
    },
    "IOptimizationProfile": {"set_shape": ["input", "min", "opt", "max"]},
    "ITimingCache": {"serialize": []},
    "NetworkDefinitionCreationFlag": {"STRONGLY_TYPED": "enum"},
    "BuilderFlag": {"VERSION_COMPATIBLE": "enum"},
    "MemoryPoolType": {"WORKSPACE": "enum"},
}


def table_signature(params: list[str]) -> inspect.Signature:
    """An inspect.Signature from a BUILDER_API parameter list ("name" or "name=default")."""
    out = []
    for p in params:
        name, _, default = p.partition("=")
        out.append(inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                     default=default if default else inspect.Parameter.empty))
    return inspect.Signature(out)


class TableChecked:
    """Wraps a builder-side fake: only members BUILDER_API lists for `cls`, calls bound to its signature."""

    def __init__(self, cls: str, impl: Any) -> None:
        api = BUILDER_API[cls]
        for name in _public(impl):
            assert name in api, f"fake {type(impl).__name__}.{name}: not in TensorRT's {cls} API table"
        object.__setattr__(self, "_cls", cls)
        object.__setattr__(self, "_impl", impl)

    def __getattr__(self, name: str) -> Any:
        api = BUILDER_API[self._cls]
        if name not in api:
            raise AttributeError(f"TensorRT's {self._cls} has no {name!r} (BUILDER_API)")
        USED.add((self._cls, name))
        value = getattr(self._impl, name)
        if isinstance(api[name], list):
            sig = table_signature(api[name])

            def call(*args: Any, **kwargs: Any) -> Any:
                assert binds([sig], args, kwargs, method=False), f"{self._cls}.{name}{sig} rejects {args} {kwargs}"
                return value(*args, **kwargs)

            return call
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        assert BUILDER_API[self._cls].get(name) == "property", f"TensorRT's {self._cls}.{name} is not a settable property"
        USED.add((self._cls, name))
        setattr(self._impl, name, value)

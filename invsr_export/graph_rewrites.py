"""Exact rewrites of the PyTorch modules that make the exported graphs cheaper for one backend.

Each rewrite is a context manager that swaps layers of a module while it is exported and restores them
afterwards; the graphs are then validated against the untouched PyTorch reference like any other.
Only ONNX Runtime folders get them: ``fused_attention`` emits a com.microsoft op TensorRT cannot parse,
and ``phase_split_upsample`` has not been measured under TensorRT yet (TensorRT graphs stay plain).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

from torch import nn

from .fused_attention import fused_attention
from .phase_upsample import phase_split_upsamplers

#: name -> context manager(module) yielding how many layers it swapped.
REWRITES = {"fused_attention": fused_attention, "phase_split_upsample": phase_split_upsamplers}
#: The rewrites each backend's graphs are exported with.
BACKEND_REWRITES: dict[str, tuple[str, ...]] = {
    "onnxruntime": ("fused_attention", "phase_split_upsample"),
    "tensorrt": (),
}


def rewrites_for(backend: str) -> tuple[str, ...]:
    """The rewrite names used for `backend`'s graphs (none for an unknown backend)."""
    return BACKEND_REWRITES.get(backend, ())


@contextlib.contextmanager
def applied(module: nn.Module, names: Sequence[str]) -> Iterator[dict[str, int]]:
    """Apply the named rewrites to `module` for the duration of the block; yields layers swapped per rewrite."""
    unknown = sorted(set(names) - set(REWRITES))
    if unknown:
        raise ValueError(f"unknown graph rewrite(s) {unknown}: choose from {sorted(REWRITES)}")
    with contextlib.ExitStack() as stack:
        yield {name: stack.enter_context(REWRITES[name](module)) for name in names}

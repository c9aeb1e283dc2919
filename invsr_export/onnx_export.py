"""torch module -> clean, checked, fixed-shape ONNX file.

NVIDIA's recipe for this UNet: the TorchScript exporter (``dynamo=False``, ~10x faster than dynamo on
these models), opset >= 19, fixed shapes, modules in ``.eval()``. The raw export is then cleaned with
onnxscript's optimizer (constant folding, including the small ``ConstantOfShape`` pads of diffusers'
downsamplers that it keeps by default, so every shape becomes static; dead-code and identity removal),
saved with external data when the weights pass the protobuf limit, and checked: ``onnx.checker`` (full,
from the path so > 2 GB works), strict shape inference, and "no dynamic dimension anywhere".
"""
from __future__ import annotations

import hashlib
import logging
import tempfile
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
import torch
from torch import nn

from invsr_runtime.folder_guard import sha256_file  # noqa: F401 - one streaming hash for export and runtime

logger = logging.getLogger(__name__)

MIN_OPSET = 19
DEFAULT_OPSET = 19
#: Newest opset when PyTorch does not say (its TorchScript exporter's own limit at the time of writing).
_FALLBACK_MAX_OPSET = 20


def max_opset() -> int:
    """The newest opset both this PyTorch's exporter and the installed onnx package support."""
    try:
        from torch.onnx import _constants

        newest = int(_constants.ONNX_MAX_OPSET)
    except (ImportError, AttributeError):
        newest = _FALLBACK_MAX_OPSET
    return min(newest, int(onnx.defs.onnx_opset_version()))
#: Above this many bytes of weights a graph is saved with its weights in ``<file>.data`` (protobuf caps at 2 GB).
EXTERNAL_DATA_THRESHOLD = 1_500_000_000
#: Largest ConstantOfShape output (elements) that is folded into an initializer.
_FOLD_CONSTANT_OF_SHAPE_LIMIT = 4096


class ExportError(RuntimeError):
    """An export step failed; the message is one line naming the graph and the step."""


def export_module(
    module: nn.Module,
    args: Sequence[torch.Tensor],
    input_names: Sequence[str],
    output_names: Sequence[str],
    path: Path,
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Export `module` at the fixed shapes of `args` to `path` (cleaned and checked); returns `path`."""
    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset} is too old: use --opset {MIN_OPSET} or newer")
    path = Path(path)
    with tempfile.TemporaryDirectory(prefix=f".{path.stem}.raw.", dir=path.parent) as tmp:
        raw = Path(tmp) / f"{path.stem}.onnx"
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings about shape asserts: shapes are fixed on purpose
            torch.onnx.export(
                module.eval(), tuple(args), str(raw), dynamo=False, opset_version=opset,
                input_names=list(input_names), output_names=list(output_names), do_constant_folding=True,
            )
        logger.debug("%s: raw TorchScript export done", path.stem)
        optimize_file(raw, path)
    check_graph(path)
    return path


def optimize_file(src: Path, dst: Path) -> Path:
    """Fold constants and clean up `src` with onnxscript / onnx_ir passes; save to `dst` (external data if large).

    onnxscript's full ``optimize`` adds a pattern rewriter that costs 4x the time of everything else here
    for a few removed no-op nodes, so the pass list is spelled out instead.
    """
    import onnx_ir as ir
    import onnx_ir.passes.common as common
    from onnxscript.optimizer import _constant_folding

    def fold():
        return _constant_folding.FoldConstantsPass(
            shape_inference=True, input_size_limit=_constant_folding.DEFAULT_CONSTANT_FOLD_INPUT_SIZE_LIMIT,
            output_size_limit=_constant_folding.DEFAULT_CONSTANT_FOLD_OUTPUT_SIZE_LIMIT,
            should_fold=_fold_small_constant_of_shape)

    model = ir.load(str(src))  # external tensors stay memory-mapped: the full UNet never sits in RAM twice
    passes = ir.passes.Sequential(
        common.TopologicalSortPass(),  # graph rewrites (fp16 casts, Q/DQ) append nodes out of order
        fold(), common.IdentityEliminationPass(), common.RemoveUnusedNodesPass(),
        fold(), common.RemoveUnusedNodesPass(),
        common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        common.DeduplicateInitializersPass(), common.CommonSubexpressionEliminationPass(),
        common.RemoveUnusedNodesPass(), common.TopologicalSortPass(),
    )
    passes(model)
    save_model(model, dst)
    return dst


def _fold_small_constant_of_shape(node) -> bool | None:
    """Fold ConstantOfShape when its output is small (onnxscript keeps it by default); defaults otherwise."""
    if node.op_type != "ConstantOfShape" or node.domain not in ("", "ai.onnx"):
        return None
    shape = node.inputs[0].const_value if node.inputs and node.inputs[0] is not None else None
    if shape is None:
        return None
    return int(np.prod(shape.numpy())) <= _FOLD_CONSTANT_OF_SHAPE_LIMIT


def weight_bytes(model) -> int:
    """Bytes of all initializers of an onnx_ir model."""
    return sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)


def save_model(model, path: Path) -> Path:
    """Save an onnx_ir model; weights go to ``<name>.data`` beside it when above the threshold."""
    import onnx_ir as ir

    path = Path(path)
    for stale in (path, data_path(path)):
        stale.unlink(missing_ok=True)
    if weight_bytes(model) > EXTERNAL_DATA_THRESHOLD:
        ir.save(model, str(path), external_data=data_path(path).name)
    else:
        ir.save(model, str(path))
    return path


def save_proto(model: onnx.ModelProto, path: Path) -> Path:
    """Save an onnx ModelProto the same way as :func:`save_model` (external data when large)."""
    path = Path(path)
    for stale in (path, data_path(path)):
        stale.unlink(missing_ok=True)
    size = sum(len(t.raw_data) for t in model.graph.initializer)
    if size > EXTERNAL_DATA_THRESHOLD:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data_path(path).name, size_threshold=1024)
    else:
        onnx.save_model(model, str(path))
    return path


def data_path(path: Path) -> Path:
    """External-data file of a graph: ``unet.onnx`` -> ``unet.onnx.data``."""
    return Path(path).with_name(Path(path).name + ".data")


def graph_files(path: Path) -> list[Path]:
    """The graph file and, when present, its external-data file (what must travel together)."""
    return [p for p in (Path(path), data_path(path)) if p.is_file()]


def check_graph(path: Path) -> None:
    """onnx.checker (full) + strict shape inference from the path; refuse any non-static dimension."""
    path = Path(path)
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"{path.name}: ONNX checker failed: {str(exc).splitlines()[0]}") from None
    model = onnx.load(str(path), load_external_data=False)
    dynamic = [vi.name for vi in list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info)
               if any(not d.HasField("dim_value") for d in vi.type.tensor_type.shape.dim)]
    if dynamic:
        raise ExportError(f"{path.name}: {len(dynamic)} tensors have dynamic dimensions (first: {dynamic[0]})")


def onnx_digest(path: Path) -> str:
    """sha256 over a graph file followed by its external data, so a weight change changes the digest."""
    digest = hashlib.sha256()
    for file in graph_files(path):
        digest.update(sha256_file(file).encode())
    return digest.hexdigest()

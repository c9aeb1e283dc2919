"""Validation of exported graphs against the PyTorch reference, on the CPU through ONNX Runtime.

Two measurements, both with the same LR tiles (real photos, degraded) and the same seeded noise:
* per component: each ORT graph vs its torch wrapper on identical inputs (the inputs a real chain
  produces, recorded from the ORT chain itself): max / mean absolute error and max error relative to
  the reference's largest magnitude;
* end to end: the four ORT graphs chained vs ``ReferencePipeline.upscale_tiles`` -> PSNR of the HR tiles
  (data range 1), for each validated step count; the gate applies to the lowest;
* drift per quantized component: the chain with only that component's exported graph (the others run as
  the fp32 torch graphs) vs the reference, per step count: what quantizing that one component costs end
  to end, so a user can weigh each ``--quantize`` choice on their own photos and weights.

Gates (minimum end-to-end PSNR, dB): fp32 50 (the same model: synthetic:tiny measures ~130 dB);
fp16 40 (measures ~68 dB), int8 30 (~45 dB), fp8 25 (~34 dB, E4M3's 3 mantissa bits on uniformly
distributed random weights). Each floor sits 9-28 dB under what synthetic:tiny measures, leaving room
for other photos, seeds and real weights, while a grossly broken pass (mis-scaled Q/DQ that saturates,
swapped inputs, a decoder running on garbage) lands far below it. Subtle precision slips (an FP16
timestep, an FP16 Euler update) are caught by the graph-structure tests instead. --gate-db overrides.
"""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from invsr_runtime.noise import tile_noise
from invsr_runtime.schedule import DEFAULT_TIMESTEPS, make_schedule

from .chain import Record, flush_denormals, ort_runner, ort_sessions, run_chain, torch_runner
from .photos import photo_lr_tiles

logger = logging.getLogger(__name__)

#: Minimum end-to-end PSNR (dB) per precision.
GATES_DB = {"fp32": 50.0, "fp16": 40.0, "int8": 30.0, "fp8": 25.0}
VALIDATION_SEED = 20250
DEFAULT_STEPS = (1, 2)
DEFAULT_TILES = 4


class ValidationFailed(RuntimeError):
    """End-to-end PSNR below the precision's gate; one line with the numbers and the override flag."""


@dataclass
class ValidationResult:
    """What goes into manifest["validation"]."""

    precision: str
    gate_db: float
    psnr_db: dict[str, float]
    min_psnr_db: float
    passed: bool
    components: dict[str, dict[str, float]] = field(default_factory=dict)
    #: quantized component -> {step count: end-to-end PSNR with only that component exported}
    drift_db: dict[str, dict[str, float]] = field(default_factory=dict)
    tiles: int = 0
    seed: int = VALIDATION_SEED
    reference: str = "invsr_train.pipeline.ReferencePipeline.upscale_tiles (fp32, CPU)"
    runtime: str = "onnxruntime CPUExecutionProvider"

    def to_dict(self) -> dict:
        return asdict(self)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB for images in [0, 1] (inf when identical)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)


def _noise(seed: int, count: int, latent: int) -> tuple[np.ndarray, np.ndarray]:
    pairs = [tile_noise(seed, i, (latent, latent)) for i in range(count)]
    return np.stack([v for v, _ in pairs]), np.stack([p for _, p in pairs])


def component_errors(sessions: Mapping[str, object], wrappers: Mapping[str, object], record: Record) -> dict:
    """Each ORT graph vs its torch wrapper on the recorded feeds: max_abs, mean_abs, max_rel."""
    ort_run, torch_run = ort_runner(sessions), torch_runner(wrappers)
    errors = {}
    for name, feeds_list in record.items():
        max_abs = mean_abs = ref_max = 0.0
        for feeds in feeds_list:
            got, ref = ort_run(name, feeds), torch_run(name, feeds)
            diff = np.abs(got.astype(np.float64) - ref)
            max_abs, ref_max = max(max_abs, float(diff.max())), max(ref_max, float(np.abs(ref).max()))
            mean_abs += float(diff.mean()) / len(feeds_list)
        errors[name] = {"max_abs": max_abs, "mean_abs": mean_abs, "max_rel": max_abs / max(ref_max, 1e-12)}
    return errors


def validate(
    paths: Mapping[str, Path],
    pipeline,
    wrappers: Mapping[str, object],
    precision: str,
    tile: int,
    batch: int,
    tiles: int = DEFAULT_TILES,
    steps: Sequence[int] = DEFAULT_STEPS,
    images: Path | None = None,
    seed: int = VALIDATION_SEED,
    gate_db: float | None = None,
    quantized: Sequence[str] = (),
) -> ValidationResult:
    """Run every exported graph in ORT against the reference; the result says whether the gate holds.

    For each component in `quantized`, also the end-to-end PSNR with only that graph exported (drift_db).
    """
    base = pipeline.base
    n = max(batch, -(-tiles // batch) * batch)
    lr = photo_lr_tiles(tile, n, images, seed=seed)
    vae_noise, pred_noise = _noise(seed, n, tile * 4 // 8)
    embeds = base.prompt_embeds.float().cpu().numpy()
    sessions = ort_sessions(paths)
    with flush_denormals():
        scores, record = _end_to_end(ort_runner(sessions), pipeline, lr, vae_noise, pred_noise, embeds, batch, steps)
        errors = component_errors(sessions, wrappers, record)
        drift = {name: _end_to_end(_only(name, sessions, wrappers), pipeline, lr, vae_noise, pred_noise, embeds,
                                   batch, steps)[0] for name in quantized}
    gate = GATES_DB[precision] if gate_db is None else gate_db
    worst = min(scores.values())
    return ValidationResult(precision, gate, scores, worst, worst >= gate, errors, drift, tiles=n, seed=seed)


def _only(name: str, sessions: Mapping[str, object], wrappers: Mapping[str, object]):
    """Runner with the exported graph of `name` only; every other component runs its fp32 torch graph."""
    exported, reference = ort_runner(sessions), torch_runner(wrappers)
    return lambda component, feeds: (exported if component == name else reference)(component, feeds)


def _end_to_end(run, pipeline, lr, vae_noise, pred_noise, embeds, batch, steps) -> tuple[dict[str, float], Record]:
    """PSNR of the ORT chain vs ReferencePipeline.upscale_tiles per step count; the longest run's feeds."""
    import torch

    base, n = pipeline.base, lr.shape[0]
    scores: dict[str, float] = {}
    record: Record = {}
    for count in steps:
        schedule = make_schedule(DEFAULT_TIMESTEPS[count], base.alphas_cumprod)
        got, ref = [], []
        for s in range(0, n, batch):
            sl = slice(s, s + batch)
            got.append(run_chain(run, lr[sl], vae_noise[sl], pred_noise[sl], schedule, embeds,
                                 record=record if count == max(steps) and s == 0 else None))
            ref.append(pipeline.upscale_tiles(torch.from_numpy(lr[sl]), schedule, torch.from_numpy(vae_noise[sl]),
                                              torch.from_numpy(pred_noise[sl])).numpy())
        scores[str(count)] = psnr(np.concatenate(got), np.concatenate(ref))
        logger.info("end to end, %d step(s): %.2f dB", count, scores[str(count)])
    return scores, record


def check_gate(result: ValidationResult, enforce: bool = True) -> None:
    """Raise ValidationFailed (one line, with the override flag) when the gate does not hold."""
    if result.passed:
        return
    message = (f"{result.precision} export misses its validation gate: end-to-end PSNR "
               f"{result.min_psnr_db:.2f} dB < {result.gate_db:.1f} dB against the PyTorch reference "
               "(pass --no-gate to keep it anyway)")
    if enforce:
        raise ValidationFailed(message)
    logger.warning("%s", message)

"""report.json (everything) and report.md (the tables a person reads), from the records of a run.

Derived numbers, all per configuration (backend, precision, steps, batch):
* speed-up against torch-eager at the authors' precision (fp32 on CPU, fp16 on GPU), same steps and batch,
  end to end and per stage (ratio of per-image medians: > 1 is faster);
* speed-up against the paper's A100 figure for that step count (117 ms for 1 step; per image, amortised);
* share of the compute floor reached: FLOPs counted from the models / the peak matmul rate measured in
  the same run, divided by the measured median (1.0 would be a machine doing nothing but peak-rate matmuls).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable

from invsr_runtime.tempfiles import atomic_write

from . import flops
from .runners import STAGES

#: InvSR paper, x4 128 -> 512, A100-40GB, per image (amortised over a large batch), by step count.
PAPER_A100_MS = {1: 117.0, 2: 149.0, 3: 176.0, 4: 207.0, 5: 244.0}
STAGE_TITLES = {"predictor": "predictor", "vae_encoder": "VAE encode", "unet": "UNet / step",
                "vae_decoder": "VAE decode"}
#: Stage order in tables (INVSR.md's order: predictor first).
TABLE_STAGES = ("predictor", "vae_encoder", "unet", "vae_decoder")


def baseline_precision(device: str) -> str:
    """torch-eager's precision as the authors run it: fp16 on GPU, fp32 on CPU."""
    return "fp16" if device == "cuda" else "fp32"


def _ok(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r.get("status") == "ok"]


def find(records: Iterable[dict[str, Any]], **key: Any) -> dict[str, Any] | None:
    """The first ok record whose fields equal `key`."""
    for r in _ok(records):
        if all(r.get(k) == v for k, v in key.items()):
            return r
    return None


def eager_baseline(records: list[dict[str, Any]], device: str, steps: int, batch: int) -> dict[str, Any] | None:
    """torch-eager at the authors' precision (fp32 as fallback) for the same steps and batch."""
    for precision in dict.fromkeys((baseline_precision(device), "fp32")):
        hit = find(records, backend="torch-eager", precision=precision, steps=steps, batch=batch)
        if hit:
            return hit
    return None


def derive(record: dict[str, Any], records: list[dict[str, Any]], macs: dict[str, float] | None,
           peak_flops: float | None, device: str) -> dict[str, Any]:
    """Speed-ups, paper comparison and floor shares of one ok record (returned as a new dict)."""
    r = dict(record)
    steps, batch = r["steps"], r["batch"]
    base = eager_baseline(records, device, steps, batch)
    if base:
        r["baseline"] = f"torch-eager {base['precision']}"
        r["speedup_vs_torch_eager"] = base["per_image_ms"] / r["per_image_ms"]
        r["stage_speedup_vs_torch_eager"] = {
            s: base["stages"][s]["median"] / r["stages"][s]["median"]
            for s in r.get("stages", {}) if s in base.get("stages", {})}
    if steps in PAPER_A100_MS:
        r["paper_a100_ms"] = PAPER_A100_MS[steps]
        r["speedup_vs_paper_a100"] = PAPER_A100_MS[steps] / r["per_image_ms"]
    if macs and peak_flops:
        r["floor_ms"] = {s: flops.floor_ms(macs[s] * batch, peak_flops) for s in STAGES}
        r["floor_ms"]["end_to_end"] = flops.floor_ms(flops.chain_macs(macs, steps) * batch, peak_flops)
        r["floor_share"] = {s: r["floor_ms"][s] / r["stages"][s]["median"] for s in r.get("stages", {})}
        r["floor_share"]["end_to_end"] = r["floor_ms"]["end_to_end"] / r["end_to_end"]["median"]
    return r


def build_report(meta: dict[str, Any], reference: dict[str, Any] | None, records: list[dict[str, Any]],
                 setup: list[dict[str, Any]]) -> dict[str, Any]:
    """The whole report: run metadata, machine, compute (MACs, peak, floors), configurations, set-up costs."""
    device = meta["settings"]["device"]
    macs = (reference or {}).get("macs_per_tile")
    peak = (reference or {}).get("peak", {}).get("flops_per_s")
    configs = [derive(r, records, macs, peak, device) if r.get("status") == "ok" else r for r in records]
    compute = None
    if macs:
        compute = {"macs_per_tile": macs, "gmac_per_tile": {s: v / 1e9 for s, v in macs.items()},
                   "peak": reference.get("peak"), "counted_with": "torch.utils.flop_counter on meta-device clones",
                   "floor_ms_per_tile": {s: flops.floor_ms(macs[s], peak) for s in STAGES} if peak else None}
    return {**meta, "compute": compute, "paper_a100_ms": PAPER_A100_MS,
            "reference": {k: v for k, v in (reference or {}).items() if k not in ("macs_per_tile", "peak", "kind")},
            "configs": configs, "setup": setup, "headline": headline(configs, device)}


def headline(configs: list[dict[str, Any]], device: str) -> list[dict[str, Any]]:
    """End-to-end speed-up of every backend x precision over torch-eager at its smallest steps and batch."""
    ok = _ok(configs)
    if not ok:
        return []
    steps, batch = min(r["steps"] for r in ok), min(r["batch"] for r in ok)
    return [{"backend": r["backend"], "precision": r["precision"], "steps": steps, "batch": batch,
             "per_image_ms": r["per_image_ms"], "speedup_vs_torch_eager": r.get("speedup_vs_torch_eager")}
            for r in ok if r["steps"] == steps and r["batch"] == batch]


def _json_safe(value: Any) -> Any:
    """inf/nan floats -> "inf"/"nan" strings so the file is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_json(report: dict[str, Any], path: Path) -> Path:
    """report.json (strict JSON, indented)."""
    data = (json.dumps(_json_safe(report), indent=1, allow_nan=False) + "\n").encode("utf-8")
    return atomic_write(path, lambda fh: fh.write(data))

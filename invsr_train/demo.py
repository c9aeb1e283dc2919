"""`python -m invsr_train.demo`: the main job end to end on sample photos, online or offline.

With a model hub in reach it uses SD-Turbo and the official noise predictor; without one it falls back
to the synthetic tiny models (random weights: the images show that the pipeline runs, not what InvSR
looks like) and says so.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from invsr_runtime.imageio import save_rgb

logger = logging.getLogger(__name__)

DEMO_SAMPLES = ("chelsea", "coffee")


def _load_models(base_spec: str, predictor_spec: str):
    """Real models if they can be loaded, else the synthetic tiny ones (with a printed notice)."""
    from .models.base import ModelLoadError, load_base, load_predictor

    try:
        base = load_base(base_spec)
        return base, load_predictor(predictor_spec, base_name=base.name), False
    except ModelLoadError as exc:
        print(f"offline: {exc}")
        print("falling back to --base synthetic:tiny --predictor synthetic (random weights, CPU)")
        base = load_base("synthetic:tiny")
        return base, load_predictor("synthetic", base_name=base.name), True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m invsr_train.demo", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="demo", help="output folder")
    p.add_argument("--base", default="stabilityai/sd-turbo")
    p.add_argument("--predictor", default="hub")
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--color-fix", default="wavelet", help="none, wavelet or ycbcr")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    from .pipeline import ReferencePipeline
    from .samples import sample_lr

    base, predictor, _ = _load_models(args.base, args.predictor)
    pipe = ReferencePipeline(base, predictor)
    out = Path(args.out)
    for name in DEMO_SAMPLES:
        lr = sample_lr(name)
        t0 = time.perf_counter()
        hr = pipe.upscale(lr, steps=args.steps, color_fix=args.color_fix)
        save_rgb(lr, out / f"{name}_lr.png")
        save_rgb(hr, out / f"{name}_x4.png")
        print(f"{name}: {lr.shape[1]}x{lr.shape[0]} -> {hr.shape[1]}x{hr.shape[0]}, "
              f"{time.perf_counter() - t0:.2f} s (PyTorch reference, {base.name}) -> {out / (name + '_x4.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

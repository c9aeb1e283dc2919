"""`python -m invsr_train.reference`: upscale images with the PyTorch reference pipeline.

The golden path, runnable offline with synthetic bases: it is what the exported engines are checked
against, and the quickest way to see the whole algorithm work end to end.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

from invsr_runtime.colorfix import COLOR_FIXES
from invsr_runtime.imageio import ImageReadError, load_rgb, save_rgb

from .models import BASE_HELP, PREDICTOR_HELP

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m invsr_train.reference", description=__doc__.splitlines()[0])
    p.add_argument("inputs", nargs="*", help="image files (or none with --sample)")
    p.add_argument("--sample", action="append", default=[], help="a scikit-image sample photo, degraded x4 (e.g. astronaut)")
    p.add_argument("-o", "--out", required=True, help="output folder")
    p.add_argument("--base", default="stabilityai/sd-turbo", help=BASE_HELP)
    p.add_argument("--predictor", default="hub", help=PREDICTOR_HELP)
    p.add_argument("--steps", type=int, default=None, help="sampling steps 1..5 (default 1, or the count of --timesteps)")
    p.add_argument("--timesteps", default=None, help="custom timesteps, e.g. 200,100")
    p.add_argument("--color-fix", default="none", choices=COLOR_FIXES)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tile-batch", type=int, default=8)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def _inputs(args: argparse.Namespace) -> list[tuple[str, np.ndarray | Path]]:
    items: list[tuple[str, np.ndarray | Path]] = [(Path(p).stem, Path(p)) for p in args.inputs]
    if args.sample:
        from .samples import sample_lr

        items += [(f"{name}_lr", sample_lr(name)) for name in args.sample]
    return items


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    import torch

    from invsr_runtime.schedule import ScheduleError, resolve_timesteps

    from .models.base import ModelLoadError, load_base, load_predictor
    from .pipeline import ReferencePipeline

    try:
        resolve_timesteps(args.steps if args.steps is not None else (None if args.timesteps else 1), args.timesteps)
        items = _inputs(args)
        if not items:
            raise ValueError("no input: give image files or --sample astronaut")
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.float16 if device.startswith("cuda") else torch.float32
        base = load_base(args.base, device=device, dtype=dtype)
        predictor = load_predictor(args.predictor, base_name=base.name, device=device)
    except (ScheduleError, ModelLoadError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    pipe = ReferencePipeline(base, predictor)
    out_dir = Path(args.out)
    failed = 0
    for stem, src in items:
        try:
            lr = load_rgb(src) if isinstance(src, Path) else src
            t0 = time.perf_counter()
            hr = pipe.upscale(lr, steps=args.steps, timesteps=args.timesteps, color_fix=args.color_fix,
                              seed=args.seed, tile_batch=args.tile_batch)
            dt = time.perf_counter() - t0
            dst = out_dir / f"{stem}.png"
            save_rgb(hr, dst)
            print(f"{src if isinstance(src, Path) else stem}: {lr.shape[1]}x{lr.shape[0]} -> {hr.shape[1]}x{hr.shape[0]} "
                  f"in {dt:.2f} s -> {dst}")
        except ImageReadError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

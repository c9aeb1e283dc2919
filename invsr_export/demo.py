"""`python -m invsr_export.demo`: the main job end to end: export an engine folder, then upscale photos with it.

With a model hub in reach it exports SD-Turbo + the official noise predictor; without one it says so
and falls back to the synthetic tiny models (random weights: the images show that export, validation
and the lean runtime work end to end, not what InvSR looks like). The backend is picked by
`invsr-export --backend auto`: TensorRT engines where TensorRT and a GPU exist, else ONNX Runtime.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

from invsr_runtime.imageio import save_rgb

DEMO_SAMPLES = ("chelsea", "coffee")


def _export(opts, progress):
    """Export with the requested models; fall back to synthetic:tiny when they cannot be loaded."""
    from invsr_train.models.base import ModelLoadError

    from .exporter import run_export

    try:
        return run_export(opts, progress)
    except ModelLoadError as exc:
        print(f"offline: {exc}")
        print("falling back to --base synthetic:tiny --predictor synthetic (random weights) on this machine")
        return run_export(dataclasses.replace(opts, base="synthetic:tiny", predictor="synthetic"), progress)


def _progress(component: str, stage: str, seconds: float | None) -> None:
    if seconds is not None:
        print(f"  export {component:<11} {stage:<10} {seconds:6.1f} s", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m invsr_export.demo", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="demo", type=Path, help="output folder (engines/, inputs/, outputs/)")
    p.add_argument("--base", default="stabilityai/sd-turbo")
    p.add_argument("--predictor", default="hub")
    p.add_argument("--precision", default="fp32", help="fp32 (ONNX Runtime on CPU runs fp32 fastest), fp16, int8, fp8")
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--color-fix", default="wavelet", help="none, wavelet or ycbcr")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from invsr_runtime import cli as run_cli
    from invsr_train.samples import sample_lr

    from .cli import format_summary
    from .exporter import ExportOptions

    engines = args.out / "engines"
    print(f"1/2 invsr-export --out {engines} --precision {args.precision} --backend auto")
    opts = ExportOptions(out=engines, precision=args.precision, base=args.base, predictor=args.predictor, force=True)
    print(format_summary(_export(opts, _progress)))

    inputs = []
    for name in DEMO_SAMPLES:
        path = args.out / "inputs" / f"{name}.png"
        save_rgb(sample_lr(name), path)
        inputs.append(str(path))
    outputs = args.out / "outputs"
    print(f"2/2 invsr-run {engines} {' '.join(inputs)} -o {outputs}")
    return run_cli.run([str(engines), *inputs, "-o", str(outputs), "--steps", str(args.steps),
                        "--color-fix", args.color_fix, "--overwrite"])


if __name__ == "__main__":
    sys.exit(main())

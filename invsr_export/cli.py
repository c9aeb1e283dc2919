"""`invsr-export`: InvSR's four graphs -> ONNX (fp32 / fp16 / int8 / fp8) or TensorRT engines, validated.

Progress goes to stderr (one line per component and stage), the summary table to stdout. Errors are one
line ``error: ...`` on stderr: exit 2 for bad input (options, models, --out), 1 for a failed export or a
missed validation gate, 130 when interrupted (143 on SIGTERM, cleaned up the same way). A failed export never leaves a folder at --out.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import NoReturn, Sequence

from invsr_runtime.manifest import PRECISIONS
from invsr_runtime.signals import exit_code, interruption, terminate_like_interrupt
from invsr_runtime.warning_lines import warnings_as_lines
from invsr_train.models import BASE_HELP, PREDICTOR_HELP

from .exporter import EXPORT_TARGETS, ExportOptions, ExportReport

logger = logging.getLogger("invsr_export")

_STAGES = ("export", "fp16", "calibrate", "quantize", "validate", "engine")


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line (`error: ...`) with exit code 2."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see invsr-export --help)", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="invsr-export", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path, help="engine folder to write")
    p.add_argument("--precision", default="fp16", choices=PRECISIONS, help="graph precision (default fp16)")
    p.add_argument("--backend", default="auto", choices=EXPORT_TARGETS,
                   help="tensorrt: build engines (needs TensorRT + a GPU); onnxruntime: ONNX files; "
                        "auto: TensorRT when available, else ONNX (default)")
    p.add_argument("--base", default="stabilityai/sd-turbo",
                   help=BASE_HELP)
    p.add_argument("--predictor", default="hub", help=PREDICTOR_HELP)
    p.add_argument("--tile", type=int, default=None, help="LR tile size (default: the base's, 128 for SD-Turbo)")
    p.add_argument("--batch", type=int, default=1, help="tiles per engine call (fixed in the graphs)")
    p.add_argument("--calib-images", type=Path, default=None,
                   help="folder of HR photos for int8/fp8 calibration (default: scikit-image's samples)")
    p.add_argument("--quantize", default="unet",
                   help="int8/fp8: components to quantize, comma-separated from unet,predictor,vae_encoder,"
                        "vae_decoder (default unet, NVIDIA's recipe); the others stay fp16")
    p.add_argument("--smoothquant", type=float, default=None, metavar="ALPHA",
                   help="int8: SmoothQuant the quantized MatMuls with this alpha (e.g. 0.5) before calibrating")
    p.add_argument("--calib-tiles", type=int, default=32, help="LR tiles to calibrate on (int8/fp8)")
    p.add_argument("--opset", type=int, default=19, help="ONNX opset (>= 19)")
    p.add_argument("--force", action="store_true", help="replace an existing --out folder")
    p.add_argument("--no-validate", dest="validate", action="store_false",
                   help="skip the ORT-vs-PyTorch validation (e.g. full size on a small machine)")
    p.add_argument("--no-gate", dest="gate", action="store_false",
                   help="keep the export even when validation misses the precision's PSNR gate")
    p.add_argument("--gate-db", type=float, default=None, help="override the precision's PSNR gate (dB)")
    p.add_argument("--validate-tiles", type=int, default=4, help="photo tiles used by validation")
    p.add_argument("--validate-steps", default="1,2", help="step counts validated end to end, e.g. 1,2")
    p.add_argument("--workspace-mib", type=int, default=4096, help="TensorRT workspace cap (MiB)")
    p.add_argument("--opt-level", type=int, default=3, choices=range(6), help="TensorRT builder optimization level")
    p.add_argument("--version-compatible", action="store_true",
                   help="TensorRT: build version-compatible engines (needed by the lean runtime, tensorrt-lean)")
    p.add_argument("--timing-cache", type=Path, default=None, help="TensorRT timing cache file (read and updated)")
    p.add_argument("--engine-cache", type=Path, default=None,
                   help="TensorRT engine cache folder (default: $INVSR_TRT_CACHE/engines)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging and tracebacks")
    return p


def _options(args: argparse.Namespace) -> ExportOptions:
    try:
        steps = tuple(int(s) for s in str(args.validate_steps).split(",") if s.strip())
    except ValueError:
        print(f"error: --validate-steps takes step counts such as 1,2, got {args.validate_steps!r}", file=sys.stderr)
        raise SystemExit(2) from None
    return ExportOptions(
        out=args.out, precision=args.precision, backend=args.backend, base=args.base, predictor=args.predictor,
        tile=args.tile, batch=args.batch, calib_images=args.calib_images, calib_tiles=args.calib_tiles,
        quantize=tuple(c.strip() for c in str(args.quantize).split(",") if c.strip()), smoothquant=args.smoothquant,
        opset=args.opset, force=args.force, validate=args.validate, gate=args.gate, gate_db=args.gate_db,
        validate_tiles=args.validate_tiles, validate_steps=steps, workspace_mib=args.workspace_mib,
        optimization_level=args.opt_level, version_compatible=args.version_compatible, timing_cache=args.timing_cache, engine_cache=args.engine_cache,
    )


def _setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("invsr-export: %(message)s"))
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("onnxscript", "onnx_ir"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _progress_printer():
    start = time.perf_counter()

    def progress(component: str, stage: str, seconds: float | None) -> None:
        stamp = f"[{time.perf_counter() - start:7.1f}s]"
        if seconds is None:
            logger.info("%s %-11s %s ...", stamp, component if stage != "validate" else "all", stage)
        else:
            logger.info("%s %-11s %s done in %.1f s%s", stamp, component if stage != "validate" else "all", stage,
                        seconds, _memory_note())

    return progress


def _memory_note() -> str:
    """', memory X GB (peak Y GB)': this process's resident set now (Linux) and its high-water mark.

    Export memory decides which machine can build a folder (issue 17), so every stage reports it.
    """
    try:
        import resource
    except ImportError:  # not on Windows
        return ""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    try:
        now = int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize()
    except (OSError, IndexError, ValueError):
        return f", peak memory {peak / 1e9:.1f} GB"
    return f", memory {now / 1e9:.1f} GB (peak {peak / 1e9:.1f} GB)"


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "bad input": one line, exit 2."""
    from invsr_train.models.base import ModelLoadError
    from invsr_train.models.noise_predictor import CheckpointError

    from .engine_folder import OutputError
    from .exporter import ExportOptionError
    from .photos import PhotoError
    from .tensorrt_build import TensorRTUnavailable

    return (ModelLoadError, CheckpointError, OutputError, ExportOptionError, PhotoError, TensorRTUnavailable)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    opts = _options(args)
    from .exporter import run_export

    try:
        with terminate_like_interrupt(), warnings_as_lines():
            report = run_export(opts, _progress_printer())
    except KeyboardInterrupt as exc:
        return _interrupted(exc, opts.out)
    except _user_errors() as exc:
        return _fail(exc, 2, args.verbose)
    except Exception as exc:  # export, quantization, validation gate, TensorRT build, disk...
        stop = interruption(exc)  # a library's clean-up that failed on the signal's way out
        return _interrupted(stop, opts.out) if stop is not None else _fail(exc, 1, args.verbose)
    print(format_summary(report))
    return 0


def _interrupted(exc: KeyboardInterrupt, out: Path) -> int:
    print(f"error: {exc or 'interrupted'}; nothing was written to {out}", file=sys.stderr)
    return exit_code(exc)


def _fail(exc: BaseException, code: int, verbose: bool) -> int:
    if verbose:
        logger.exception("failed")
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    from .validate import ValidationFailed

    known = isinstance(exc, ValidationFailed) or code == 2 or type(exc).__module__.startswith("invsr_")
    print(f"error: {first}" if known else f"error: {type(exc).__name__}: {first}", file=sys.stderr)
    return code


def format_summary(report: ExportReport) -> str:
    """The table printed after a successful export."""
    head = (f"wrote {report.out} ({report.backend}, {report.precision}) in {report.seconds:.1f} s"
            f" - backend: {report.backend_reason}")
    cols = f"{'component':<12}{'precision':<10}{'file':<18}{'size':>10}  " + "".join(
        f"{s.split('+')[-1]:>10}" for s in _STAGES if s != "validate") + f"{'max abs':>11}{'max rel':>10}"
    lines = [head, cols]
    for r in report.components.values():
        times = "".join(f"{r.seconds[s]:>9.1f}s" if s in r.seconds else f"{'-':>10}"
                        for s in _STAGES if s != "validate")
        err = (f"{r.errors['max_abs']:>11.2e}{r.errors['max_rel']:>10.2e}" if r.errors else f"{'-':>11}{'-':>10}")
        lines.append(f"{r.name:<12}{r.precision:<10}{r.file:<18}{r.size_bytes / 2**20:>8.1f}MB  {times}{err}")
    v = report.validation
    if v.get("skipped"):
        lines.append("validation: skipped (--no-validate)")
    else:
        scores = ", ".join(f"{k} step{'s' if k != '1' else ''} {val:.2f} dB" for k, val in v["psnr_db"].items())
        verdict = "passed" if v["passed"] else "MISSED (kept: --no-gate)"
        lines.append(f"end-to-end PSNR vs PyTorch on {v['tiles']} photo tiles: {scores}; "
                     f"gate >= {v['gate_db']:.1f} dB: {verdict}")
        for name, drift in v.get("drift_db", {}).items():
            lines.append(f"  with only {name} {report.precision} (the rest fp32 PyTorch): " + ", ".join(
                f"{k} step{'s' if k != '1' else ''} {val:.2f} dB" for k, val in drift.items()))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

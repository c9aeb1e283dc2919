"""``invsr-train``: train (or fine-tune) InvSR's noise predictor on folders of HR images.

    invsr-train --data DIR [DIR ...] --out OUT [--base MODEL] [--config FILE.yaml] [--max-steps N]
                [--batch-size N] [--micro-batch N] [--resume] [--init CKPT] [--set section.key=value ...]

Several GPUs: ``torchrun --nproc_per_node N -m invsr_train.cli ...`` (same flags). The config file
holds every other setting (``configs/invsr_train.yaml`` is the default recipe); flags override it.
Errors the user can fix print one line (``invsr-train: error: ...``) and exit with status 2.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from invsr_runtime.signals import exit_code, interruption, terminate_like_interrupt

from .models import BASE_HELP

__all__ = ["main", "build_parser", "resolve_config"]

PROG = "invsr-train"


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface (flags override the config file)."""
    p = argparse.ArgumentParser(prog=PROG, description="Train InvSR's noise predictor (SD-Turbo + VAE stay frozen).")
    p.add_argument("--data", nargs="+", metavar="DIR", help="folders of HR training images (searched recursively)")
    p.add_argument("--val-data", nargs="+", metavar="DIR",
                   help="held-out folders for validation (default: hold out data.val_holdout training images)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="output folder: checkpoints, noise_predictor.pth, logs, samples")
    p.add_argument("--base", metavar="MODEL",
                   help=BASE_HELP)
    p.add_argument("--config", metavar="FILE",
                   help="YAML config (sections data, model, loss, discriminator, optim, train, degradation)")
    p.add_argument("--max-steps", type=int, metavar="N", help="optimiser steps in total (train.max_steps)")
    p.add_argument("--batch-size", type=int, metavar="N", help="global batch per step (train.batch_size)")
    p.add_argument("--micro-batch", type=int, metavar="N", help="per-process micro-batch (train.micro_batch)")
    p.add_argument("--lr", type=float, help="predictor learning rate (optim.lr)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--init", metavar="CKPT", help="start from these predictor weights (.pth, e.g. the official ones)")
    p.add_argument("--lpips-weights", metavar="FILE", help="latent LPIPS weights (loss.lpips_path)")
    p.add_argument("--precision", choices=["auto", "fp32", "fp16", "bf16"], help="train.precision")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:N")
    p.add_argument("--seed", type=int, help="train.seed")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. loss.gan_start=500 (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


#: flag -> dotted config key
_FLAG_KEYS = {
    "data": "data.train",
    "val_data": "data.val",
    "base": "model.base",
    "max_steps": "train.max_steps",
    "batch_size": "train.batch_size",
    "micro_batch": "train.micro_batch",
    "lr": "optim.lr",
    "init": "model.init",
    "lpips_weights": "loss.lpips_path",
    "precision": "train.precision",
    "seed": "train.seed",
}


def resolve_config(args: argparse.Namespace) -> Any:
    """Defaults < --config file < --set assignments < dedicated flags."""
    from .config import load_config, parse_assignment

    overrides: dict[str, Any] = dict(parse_assignment(a) for a in args.set)
    for flag, key in _FLAG_KEYS.items():
        value = getattr(args, flag)
        if value is not None:
            overrides[key] = value
    return load_config(args.config, overrides)


def _setup_logging(verbose: bool) -> None:
    """Library logs to stderr; ranks > 0 only report errors."""
    rank = int(os.environ.get("RANK", "0"))
    level = logging.DEBUG if verbose else logging.INFO
    if rank != 0:
        level = logging.ERROR
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("PIL", "urllib3", "matplotlib", "httpx", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 2 for a problem the user can fix)."""
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    from invsr_runtime.warning_lines import warnings_as_lines

    from .builders import TrainError
    from .config import ConfigError
    from .data import DataError

    trainer = None
    try:
        from .trainer import Trainer

        with terminate_like_interrupt():
            cfg = resolve_config(args)
            with warnings_as_lines():
                trainer = Trainer(cfg, args.out, resume=args.resume, device=args.device, progress=not args.no_progress)
                result = trainer.train()
    except (ConfigError, TrainError, DataError) as e:
        print(f"{PROG}: error: {_last_reason(e)}", file=sys.stderr)
        return 2
    except Exception as exc:
        stop = interruption(exc)  # a library's clean-up that failed on the signal's way out
        if stop is None:
            raise
        return _interrupted(stop)
    except KeyboardInterrupt as exc:
        return _interrupted(exc)
    finally:
        if trainer is not None:
            trainer.close()
    if trainer.dist.main:
        _report(result)
    return 0


def _last_reason(e: BaseException) -> str:
    """The one-line reason; an error re-raised from a DataLoader worker carries the worker's traceback in
    its message, whose last line is the original `Type: reason`."""
    lines = str(e).strip().splitlines() or [type(e).__name__]
    if len(lines) == 1:
        return lines[0]
    last = lines[-1]
    return last.split(": ", 1)[1] if ": " in last and "Error" in last.split(": ", 1)[0] else last


def _interrupted(exc: KeyboardInterrupt) -> int:
    print(f"{PROG}: {exc or 'interrupted'}; continue with --resume from the last checkpoint", file=sys.stderr)
    return exit_code(exc)


def _report(result: Any) -> None:
    """What the run produced, on stdout."""
    rate = f", {result.steps_per_second:.3f} steps/s" if result.steps_run else ""
    print(f"steps: {result.step} ({result.steps_run} this run{rate})")
    if result.last:
        print("last step: " + ", ".join(f"{k} {v:.5g}" for k, v in result.last.items()))
    if result.val:
        print("validation: " + ", ".join(f"{k} {v:.4f}" for k, v in result.val.items()))
    if result.predictor:
        print(f"noise predictor (EMA): {result.predictor}")
    if result.checkpoint:
        print(f"checkpoint: {result.checkpoint}")


if __name__ == "__main__":
    sys.exit(main())

"""Construction helpers for a training run: precision, batch plan, data lists, predictor, optimisers.

What: small functions that turn the config into objects, each raising :class:`TrainError` (one line,
saying what to change) for a config that cannot work on this machine. Why separate: the trainer's
loop stays readable, and each piece can be tested alone.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .config import TrainConfig
from .data import DataError, find_images, split_holdout, verify_images
from .models.base import BaseModels, seeded
from .models.noise_predictor import CheckpointError, NoisePredictor, NoisePredictorConfig
from .objective import mix_seed

logger = logging.getLogger(__name__)

__all__ = ["BatchPlan", "Precision", "TrainError", "build_optimizers", "build_predictor", "plan_batches",
           "resolve_precision", "training_files"]


class TrainError(RuntimeError):
    """A run cannot start or continue; the message is one line and says what to change."""


@dataclass(frozen=True)
class Precision:
    """Autocast dtype (None: fp32), dtype of the frozen base, and whether a GradScaler is used."""

    name: str
    autocast: torch.dtype | None
    base_dtype: torch.dtype
    scaler: bool


def resolve_precision(name: str, device: torch.device) -> Precision:
    """``auto`` -> fp16 + scaler on CUDA, fp32 on CPU; bf16 needs no scaler; fp16 needs CUDA."""
    if name == "auto":
        name = "fp16" if device.type == "cuda" else "fp32"
    if name == "fp32":
        return Precision("fp32", None, torch.float32, False)
    if name == "bf16":
        return Precision("bf16", torch.bfloat16, torch.bfloat16, False)
    if device.type != "cuda":
        raise TrainError(f"train.precision fp16 needs a CUDA device (this run uses {device}): use fp32 or bf16")
    return Precision("fp16", torch.float16, torch.float16, True)


@dataclass(frozen=True)
class BatchPlan:
    """Global batch = world x accum x micro."""

    batch: int
    per_rank: int
    micro: int
    accum: int


def plan_batches(batch: int, micro: int, world: int) -> BatchPlan:
    """Split the global batch over ranks, then into micro-batches (micro shrinks to fit one rank's share)."""
    if batch % world:
        raise TrainError(f"train.batch_size {batch} is not divisible by the {world} processes: "
                         f"pick a multiple of {world}")
    per_rank = batch // world
    micro = min(micro, per_rank)
    if per_rank % micro:
        raise TrainError(f"each process gets {per_rank} samples per step, not a multiple of train.micro_batch {micro}")
    return BatchPlan(batch, per_rank, micro, per_rank // micro)


def training_files(cfg: TrainConfig) -> tuple[list[Path], list[Path]]:
    """(train files, validation files): verified, with a held-out split when no validation folder is given."""
    try:
        files = find_images(cfg.data.train)
        if cfg.data.verify:
            files = verify_images(files)
        if cfg.data.val:
            val = find_images(cfg.data.val)
            val = verify_images(val) if cfg.data.verify else val
            train = files
        else:
            train, val = split_holdout(files, cfg.data.val_holdout, cfg.train.seed)
    except DataError as e:
        raise TrainError(str(e)) from e
    logger.info("%d training images, %d validation images", len(train), len(val))
    return train, val[: cfg.data.val_count]


def build_predictor(cfg: TrainConfig, base: BaseModels, config: dict[str, Any] | None = None) -> NoisePredictor:
    """The trained network: from ``config`` (resume), ``model.init`` (fine-tune) or a seeded fresh init."""
    if config is not None:
        return NoisePredictor(NoisePredictorConfig.from_dict(config))
    if cfg.model.init:
        try:
            model = NoisePredictor.from_checkpoint(cfg.model.init)
        except CheckpointError as e:
            raise TrainError(f"--init: {e}") from e
        logger.info("fine-tuning from %s", cfg.model.init)
        return model.train()
    size = cfg.model.predictor
    if size == "auto":
        size = "tiny" if base.name == "synthetic:tiny" else "full"
    pc = NoisePredictorConfig.tiny() if size == "tiny" else NoisePredictorConfig()
    with seeded(mix_seed(cfg.train.seed, 0x9E3779B9)):
        model = NoisePredictor(pc)
    logger.info("new %s noise predictor (%d parameters, seeded init)", size, sum(p.numel() for p in model.parameters()))
    return model.train()


def build_optimizers(
    cfg: TrainConfig, predictor: torch.nn.Module, disc: torch.nn.Module | None
) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer | None]:
    """AdamW for the predictor; Adam with L2 weight decay for the discriminator (None without one)."""
    o = cfg.optim
    opt = torch.optim.AdamW(predictor.parameters(), lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
    d_opt = None
    if disc is not None:
        d_opt = torch.optim.Adam(disc.parameters(), lr=o.d_lr, betas=tuple(o.d_betas), weight_decay=o.d_weight_decay)
    return opt, d_opt


def warmup_lr(cfg: TrainConfig, step: int) -> float:
    """Predictor learning rate at ``step`` (0-based): linear warm-up over ``optim.warmup`` steps, then flat."""
    w = cfg.optim.warmup
    return cfg.optim.lr * min(1.0, (step + 1) / w) if w > 0 else cfg.optim.lr

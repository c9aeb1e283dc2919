"""The training loop of InvSR's noise predictor (single process or torchrun DDP).

What: :class:`Trainer` builds everything from a :class:`~invsr_train.config.TrainConfig` and an output
folder, then :meth:`Trainer.train` runs optimiser steps until ``train.max_steps``:

per step, per micro-batch: HR crops -> LR by the degradation (on the device, generator reseeded from
(seed, step, rank, micro-batch)) -> x0 via the frozen base (:mod:`invsr_train.objective`) -> L2 +
latent LPIPS + (after ``loss.gan_start``) hinge-GAN generator term, backward into the predictor only;
then a hinge discriminator update on (HR latent, detached x0). After the accumulation: AdamW step
(linear warm-up), discriminator Adam step, EMA update.

Outputs in OUT: ``checkpoints/step_*.pt`` (full state, exact resume), ``noise_predictor.pth`` (EMA
weights, official format, + its .json), ``config.yaml``, ``log.jsonl`` + ``tb/`` (TensorBoard),
``samples/*.png`` (validation). Only rank 0 writes.
"""
from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from invsr_runtime.outdir import outdir_problem
from invsr_runtime.tempfiles import atomic_write

from . import checkpointing as ckpt
from .builders import (
    TrainError,
    build_optimizers,
    build_predictor,
    plan_batches,
    resolve_precision,
    training_files,
    warmup_lr,
)
from .config import TrainConfig
from .data import HRCropDataset, StepSampler, make_loader
from .degradations import degrade
from .discriminator import LatentDiscriminator
from .distributed import DeviceError, DistInfo, all_reduce_mean, barrier, cleanup, init_distributed
from .ema import EMA
from .losses import clamp_for_disc, d_hinge_loss, g_hinge_loss, l2_loss, logit_mean
from .lpips_latent import LPIPSWeightsError, build_latent_lpips
from .models.base import BaseModels, ModelLoadError, load_base
from .objective import InvSRObjective, mix_seed
from .tracking import RunLog
from .validation import prepare_val_images, validate

logger = logging.getLogger(__name__)

__all__ = ["TrainError", "TrainResult", "Trainer", "PREDICTOR_FILE"]

PREDICTOR_FILE = "noise_predictor.pth"
SCALE = 4


@dataclass
class TrainResult:
    """What a finished (or already complete) run reports."""

    out: Path
    step: int
    steps_run: int
    seconds: float  # time in training steps (without checkpoints and validation)
    predictor: Path | None
    checkpoint: Path | None
    last: dict[str, float] = field(default_factory=dict)
    val: dict[str, float] = field(default_factory=dict)

    @property
    def steps_per_second(self) -> float:
        return self.steps_run / self.seconds if self.seconds > 0 else float("nan")


class Trainer:
    """One training run writing into ``out``. ``resume=True`` continues from the newest checkpoint there."""

    def __init__(self, cfg: TrainConfig, out: str | Path, *, resume: bool = False, device: str = "auto",
                 progress: bool = True, base: BaseModels | None = None) -> None:
        """Set everything up (``base``: an already loaded frozen base to reuse instead of ``model.base``)."""
        self.cfg = cfg
        self.out = Path(out)
        problem = outdir_problem(self.out)
        if problem is not None:
            raise TrainError(f"{problem}; pass a writable folder to --out")
        try:
            self.dist: DistInfo = init_distributed(device)
        except DeviceError as e:
            raise TrainError(str(e)) from None
        self.device = self.dist.device
        self.progress = progress
        self.precision = resolve_precision(cfg.train.precision, self.device)
        self.plan = plan_batches(cfg.train.batch_size, cfg.train.micro_batch, self.dist.world)
        self.degradation = cfg.degradation_config()
        state = self._resume_state(resume)
        self.train_files, val_files = training_files(cfg)
        self._build_models(state, base)
        self.objective = InvSRObjective(self.base, cfg.loss.timesteps, cfg.loss.hr_latent)
        self.gen = torch.Generator(device=self.device)
        self.step = 0
        self.last: dict[str, float] = {}
        self.last_val: dict[str, float] = {}
        self.train_seconds = 0.0
        self._saved_step = self._validated_step = -1
        if state is not None:
            self._load_state(state)
        self.val_images = self._val_images(val_files)
        self.log = RunLog(self.out, enabled=self.dist.main, resume_step=self.step)  # drops records of later steps
        if self.dist.main:
            text = cfg.to_yaml().encode("utf-8")
            atomic_write(self.out / "config.yaml", lambda f: f.write(text))

    # ------------------------------------------------------------------------------------ set-up
    def _resume_state(self, resume: bool) -> dict[str, Any] | None:
        """The checkpoint to continue from, or None; refuses to overwrite a run without --resume.

        An unreadable newest checkpoint (e.g. a disk that filled up) is skipped with a warning for the
        newest one that loads; it is left in place. TrainError when none loads.
        """
        found = [path for _, path in ckpt.list_checkpoints(self.out)]
        if not found:
            if resume:
                logger.warning("--resume: no checkpoint in %s, starting a new run", self.out / ckpt.CHECKPOINT_DIR)
            return None
        if not resume:
            raise TrainError(f"{self.out} already holds a training run: pass --resume to continue it "
                             "or choose another --out")
        failures = []
        for path in reversed(found):
            try:
                state = ckpt.load_checkpoint(path)
            except Exception as e:  # noqa: BLE001 - truncated zip, wrong format, unpickling refused...
                reason = str(e).strip().splitlines()[0] if str(e).strip() else ""
                failures.append(f"{path.name}: {type(e).__name__}: {reason}")
                logger.warning("cannot resume from %s (%s: %s); trying an older checkpoint", path,
                               type(e).__name__, reason)
                continue
            logger.info("resuming from %s (step %d)", path, state["step"])
            return state
        raise TrainError(f"cannot resume: none of the {len(found)} checkpoints in {self.out / ckpt.CHECKPOINT_DIR} "
                         f"loads (newest {failures[0]}); start a new run with another --out")

    def _build_models(self, state: dict[str, Any] | None, base: BaseModels | None) -> None:
        """Base (frozen), predictor (+ DDP), EMA, latent LPIPS, discriminator (+ DDP), optimisers, scalers."""
        cfg = self.cfg
        try:
            self.base = base if base is not None else load_base(cfg.model.base, self.device, self.precision.base_dtype)
        except ModelLoadError as e:
            raise TrainError(str(e)) from e
        if cfg.model.unet_grad_checkpointing:
            self.base.unet.enable_gradient_checkpointing()
        self.raw = build_predictor(cfg, self.base, state["predictor_config"] if state else None).to(self.device)
        self.ema = EMA(self.raw, cfg.optim.ema_rate)
        self.lpips = self._build_lpips()
        self.disc_raw = self._build_discriminator()
        self.model = self._wrap(self.raw)
        self.disc = self._wrap(self.disc_raw) if self.disc_raw is not None else None
        self.opt, self.d_opt = build_optimizers(cfg, self.raw, self.disc_raw)
        amp_device = "cuda" if self.device.type == "cuda" else "cpu"
        self.scaler = torch.amp.GradScaler(amp_device, enabled=self.precision.scaler)
        self.d_scaler = torch.amp.GradScaler(amp_device, enabled=self.precision.scaler)
        use_cond = self.disc_raw is not None and cfg.discriminator.text_cond
        self.cond = self.base.prompt_embeds.float() if use_cond else None
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True

    def _build_lpips(self) -> nn.Module | None:
        """The frozen latent LPIPS (None when its weight is 0)."""
        lc = self.cfg.loss
        if lc.lpips_weight <= 0:
            return None
        try:
            return build_latent_lpips(lc.lpips_path, self.cfg.train.seed, lc.lpips_pools).to(self.device)
        except LPIPSWeightsError as e:
            raise TrainError(str(e)) from e

    def _build_discriminator(self) -> LatentDiscriminator | None:
        """A seeded fresh discriminator (None when the GAN weight is 0)."""
        if self.cfg.loss.gan_weight <= 0:
            return None
        dc = self.cfg.discriminator
        cond_dim = self.base.prompt_embeds.shape[-1] if dc.text_cond else None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(mix_seed(self.cfg.train.seed, 0xD15C))
            disc = LatentDiscriminator(4, dc.channels, dc.time_dim, dc.norm_groups, cond_dim)
        return disc.to(self.device)

    def _wrap(self, module: nn.Module) -> nn.Module:
        """DDP around a trained module when several processes run."""
        if not self.dist.enabled:
            return module
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DDP(module, device_ids=ids)

    def _val_images(self, files: list[Path]) -> list:
        """Held-out pairs (rank 0 only; built once)."""
        if not self.dist.main or not files:
            return []
        crop = self.cfg.train.val_crop or self.cfg.data.crop
        return prepare_val_images(files, self.cfg.data.val_count, crop, self.degradation, self.cfg.train.seed)

    # ------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly."""
        return {
            "format": ckpt.FORMAT,
            "step": self.step,
            "config": self.cfg.to_dict(),
            "predictor_config": self.raw.config.to_dict(),
            "predictor": self.raw.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scaler": self.scaler.state_dict(),
            "discriminator": self.disc_raw.state_dict() if self.disc_raw is not None else None,
            "d_optimizer": self.d_opt.state_dict() if self.d_opt is not None else None,
            "d_scaler": self.d_scaler.state_dict(),
            "generator": self.gen.get_state(),
            "rng": ckpt.capture_rng(),
            "data": {"seed": self.cfg.train.seed, "next_step": self.step, "world": self.dist.world},
        }

    def _load_state(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state_dict` (discriminator state only when both sides have one)."""
        self.raw.load_state_dict(state["predictor"])
        self.ema.load_state_dict(state["ema"])
        self.opt.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        if self.disc_raw is not None and state.get("discriminator") is not None:
            self.disc_raw.load_state_dict(state["discriminator"])
            self.d_opt.load_state_dict(state["d_optimizer"])
            self.d_scaler.load_state_dict(state["d_scaler"])
        elif self.disc_raw is not None:
            logger.warning("the checkpoint has no discriminator: starting a fresh one")
        if state["data"].get("world") != self.dist.world:
            logger.warning("resuming with %d processes instead of %d: the sample order changes",
                           self.dist.world, state["data"].get("world"))
        self.gen.set_state(state["generator"].cpu())
        ckpt.restore_rng(state["rng"])
        self.step = int(state["step"])

    def save_checkpoint(self) -> Path:
        """Full state to OUT/checkpoints and the EMA predictor to OUT/noise_predictor.pth (rank 0), then sync."""
        path = ckpt.checkpoint_path(self.out, self.step)
        if self.dist.main:
            ckpt.atomic_save(self.state_dict(), path)
            ckpt.prune_checkpoints(self.out, self.cfg.train.keep_checkpoints)
            self.ema.shadow.save_checkpoint(self.out / PREDICTOR_FILE)
            logger.info("checkpoint %s", path)
        barrier(self.dist)
        self._saved_step = self.step
        return path

    # ------------------------------------------------------------------------------------ one step
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.precision.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.precision.autocast)

    def _no_sync(self, module: nn.Module | None, last: bool) -> contextlib.AbstractContextManager:
        """Skip DDP's gradient all-reduce on all but the last micro-batch."""
        if isinstance(module, DDP) and not last:
            return module.no_sync()
        return contextlib.nullcontext()

    def gan_active(self) -> bool:
        """Whether the generator GAN term is on at the current step."""
        return self.disc_raw is not None and self.step >= self.cfg.loss.gan_start

    def _generator_loss(self, x0: Tensor, z_hr: Tensor, t: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Weighted L2 + latent LPIPS + (when active) GAN generator term, and the unweighted figures."""
        lc = self.cfg.loss
        l2 = l2_loss(x0, z_hr)
        total = lc.l2_weight * l2
        figures = {"l2": l2.detach()}
        if self.lpips is not None:
            lp = self.lpips(x0, z_hr).mean()
            total = total + lc.lpips_weight * lp
            figures["lpips"] = lp.detach()
        if self.gan_active():
            self.disc_raw.requires_grad_(False)  # the generator term must not train the discriminator
            g = g_hinge_loss(self.disc_raw(clamp_for_disc(x0, lc.gan_clamp), t - 1, self.cond))
            self.disc_raw.requires_grad_(True)
            total = total + lc.gan_weight * g
            figures["gan"] = g.detach()
        figures["loss"] = total.detach()
        return total, figures

    def _disc_backward(self, fake: Tensor, real: Tensor, t: Tensor, last: bool) -> dict[str, Tensor]:
        """Hinge loss on real (HR latent) and fake (detached x0) in one batch; backward into D."""
        c = self.cfg.loss.gan_clamp
        z = torch.cat([clamp_for_disc(real, c), clamp_for_disc(fake, c)])
        with self._no_sync(self.disc, last):
            with self._autocast():
                logits = self.disc(z, torch.cat([t, t]) - 1, self.cond)
            n = real.shape[0]
            real_l, fake_l = [x[:n] for x in logits], [x[n:] for x in logits]
            loss = d_hinge_loss(real_l, fake_l)
            self.d_scaler.scale(loss / self.plan.accum).backward()
        return {"d_loss": loss.detach(), "d_real": logit_mean(real_l), "d_fake": logit_mean(fake_l)}

    def _micro_step(self, hr: Tensor, m: int) -> dict[str, Tensor]:
        """Forward + backward of one micro-batch (generator, then discriminator)."""
        last = m == self.plan.accum - 1
        self.gen.manual_seed(mix_seed(self.cfg.train.seed, self.step, self.dist.rank, m))
        hr = hr.to(self.device, non_blocking=True).float()
        lr01 = degrade(hr, self.gen, self.degradation, scale=SCALE)
        z_hr = self.objective.encode_hr(hr, self.gen)
        z_lr = self.objective.encode_lr(lr01, self.gen)
        t, sigma = self.objective.sample_timesteps(hr.shape[0], self.gen)
        with self._no_sync(self.model, last):
            with self._autocast():
                x0 = self.objective.predict_x0(self.model, lr01, z_lr, t, sigma, self.gen)
                loss, figures = self._generator_loss(x0, z_hr, t)
            self.scaler.scale(loss / self.plan.accum).backward()
        if self.disc is not None:
            figures.update(self._disc_backward(x0.detach(), z_hr, t, last))
        return figures

    def train_step(self, batches: Iterator[Tensor]) -> dict[str, float]:
        """One optimiser step over ``plan.accum`` micro-batches; returns the step's mean figures."""
        lr = warmup_lr(self.cfg, self.step)
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.opt.zero_grad(set_to_none=True)
        if self.d_opt is not None:
            self.d_opt.zero_grad(set_to_none=True)
        sums: dict[str, Tensor] = {}
        for m in range(self.plan.accum):
            for k, v in self._micro_step(next(batches), m).items():
                sums[k] = sums[k] + v.float() if k in sums else v.float()  # stays on the device: no sync
        figures = {k: float(v) / self.plan.accum for k, v in sums.items()}
        figures.update(self._optimizer_step())
        figures["lr"] = lr
        self.ema.update(self.raw)
        self.step += 1
        return figures

    def _optimizer_step(self) -> dict[str, float]:
        """Clip (optional), step both optimisers through their scalers."""
        out: dict[str, float] = {}
        clip = self.cfg.optim.grad_clip
        if clip > 0:
            self.scaler.unscale_(self.opt)
            out["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.raw.parameters(), clip))
        self.scaler.step(self.opt)
        self.scaler.update()
        if self.d_opt is not None:
            self.d_scaler.step(self.d_opt)
            self.d_scaler.update()
        if self.precision.scaler:
            out["loss_scale"] = float(self.scaler.get_scale())
        return out

    # ------------------------------------------------------------------------------------ loop
    def _loader(self) -> Iterator[Tensor]:
        d, r = self.cfg.data, self.cfg.train
        dataset = HRCropDataset(self.train_files, d.crop, d.hflip, r.seed)
        sampler = StepSampler(len(dataset), self.plan.batch, self.plan.micro, r.seed,
                              start_step=self.step, rank=self.dist.rank, world=self.dist.world)
        return iter(make_loader(dataset, sampler, d.workers, pin_memory=self.device.type == "cuda"))

    def run_validation(self) -> dict[str, float]:
        """Validate the EMA predictor (rank 0), log metrics and samples, then sync."""
        metrics: dict[str, float] = {}
        if self.dist.main and self.val_images:
            r = self.cfg.train
            metrics, samples = validate(self.base, self.ema.shadow, self.val_images, r.val_steps,
                                        self.out / "samples", self.step, r.sample_count)
            self.log.scalars("val", self.step, metrics)
            for i, img in enumerate(samples[:2]):
                self.log.image(f"val/sample{i}", self.step, img)
            logger.info("step %d validation: %s", self.step, ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
            self.last_val = metrics
        barrier(self.dist)
        self._validated_step = self.step
        return metrics

    def train(self) -> TrainResult:
        """Run until ``train.max_steps``; checkpoint, log and validate on the configured cadence.

        The run always ends with a checkpoint, ``noise_predictor.pth`` and a validation of its last step.
        """
        start = self.step
        if self.step < self.cfg.train.max_steps:
            self._loop(self.cfg.train.max_steps)
        if self.step > start:
            if self._saved_step != self.step:
                self.save_checkpoint()
            if self._validated_step != self.step:
                self.run_validation()
        self.log.close()
        predictor = self.out / PREDICTOR_FILE
        return TrainResult(self.out, self.step, self.step - start, self.train_seconds,
                           predictor if predictor.is_file() else None, ckpt.latest_checkpoint(self.out),
                           self.last, self.last_val)

    def _loop(self, max_steps: int) -> None:
        r = self.cfg.train
        batches = self._loader()
        bar = tqdm(total=max_steps, initial=self.step, disable=not (self.dist.main and self.progress),
                   file=sys.stderr, dynamic_ncols=True, desc="train")
        try:
            while self.step < max_steps:
                t0 = time.perf_counter()
                figures = self.train_step(batches)
                self.train_seconds += time.perf_counter() - t0
                self._check_finite(figures)
                self.last = figures
                bar.update(1)
                bar.set_postfix_str(_postfix(figures), refresh=False)
                if self.step % r.log_every == 0 or self.step == max_steps:
                    self.last = all_reduce_mean(figures, self.dist)  # mean over ranks
                    self.log.scalars("train", self.step, self.last)
                if self.step % r.ckpt_every == 0:
                    self.save_checkpoint()
                if r.val_every and self.step % r.val_every == 0:
                    self.run_validation()
        finally:
            bar.close()

    def _check_finite(self, figures: dict[str, float]) -> None:
        """Stop on a non-finite loss (fp32) - with a grad scaler, skipped steps are normal and pass."""
        if not math.isfinite(figures.get("loss", 0.0)) and not self.precision.scaler:
            raise TrainError(f"loss became {figures['loss']} at step {self.step}: lower optim.lr or check the data")

    def close(self) -> None:
        """Leave the process group."""
        self.log.close()
        cleanup(self.dist)


def _postfix(f: dict[str, float]) -> str:
    """Short progress-bar text: l2, lpips, gan, lr."""
    parts = [f"l2={f['l2']:.4f}"]
    if "lpips" in f:
        parts.append(f"lpips={f['lpips']:.4f}")
    if "gan" in f:
        parts.append(f"gan={f['gan']:.3f}")
    if "d_loss" in f:
        parts.append(f"d={f['d_loss']:.3f}")
    parts.append(f"lr={f['lr']:.2e}")
    return " ".join(parts)

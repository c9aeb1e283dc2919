"""Second-order (Real-ESRGAN-style, widened) degradation that makes training LR images from HR crops.

What: ``degrade(hr, generator)`` maps a batch of HR images (B x 3 x H x W, float in [0, 1], any device) to
LR images (B x 3 x H/scale x W/scale, float32 in [0, 1], quantised to 8 bits). Pipeline, per sample:

1. first stage: blur -> resize (up/down/keep) -> noise (Gaussian or Poisson, colour or grey) -> JPEG;
2. second stage, with probability ``second_stage_prob``: the same steps with milder ranges;
3. final stage: [resize to H/scale x W/scale, then sinc filter (p 0.8)] and JPEG, in random order;
4. round to 8 bits.

Why this shape: InvSR's released weights were trained on LR made this way (see INVSR.md, "Training"), so
fine-tuning or re-training must see the same distribution of blur, resampling, noise and compression.

Where it lives (one job per module, all re-exported here, the public import path):
``degradation/config.py`` (ranges and probabilities, YAML), ``degradation/sampling.py`` (drawing each
sample's parameters), ``degradation/ops.py`` (blur, resize, noise), ``degradation/jpeg.py`` (torch JPEG),
``degradation/pipeline.py`` (the stages on a ragged batch, ``degrade``); blur kernels: ``kernels.py``.

Design choices (documented, all configurable in :class:`DegradationConfig`):

* Everything is torch, so it runs on the data's device. JPEG is a torch re-implementation of baseline
  JPEG (IJG tables scaled by quality, JFIF YCbCr, 4:2:0 chroma by 2x2 averaging, 8x8 orthonormal DCT,
  rounding quantisation, triangle ("fancy") chroma upsampling on decode, 8-bit samples throughout); it
  tracks Pillow/libjpeg closely (see the tests) without leaving the device.
* Randomness: every scalar parameter comes from one block of uniforms per stage (B x slots, drawn from the
  given ``torch.Generator``), noise fields are drawn per sample in batch order from the same generator.
  Same generator state -> same output (bit-identical on CPU). The generator may live on the CPU or on the
  data's device; noise is drawn on the generator's device and moved.
* Parameters are per sample (kernel, resize scale and mode, noise, JPEG quality, stage-2 on/off, final
  order). Because per-sample resize scales give per-sample intermediate sizes, the batch is carried as a
  list and samples of equal size are processed together (grouped conv, batched JPEG); with
  ``shared_resize=True`` one resize draw is used for the whole batch (as in Real-ESRGAN), which keeps the
  batch one tensor and is faster on a GPU.
* Kernel-type probabilities: iso 0.45, aniso 0.25, generalized iso 0.12, generalized aniso 0.03, plateau
  iso 0.12, plateau aniso 0.03 (Real-ESRGAN's table); a sinc kernel replaces the drawn one with p 0.1. Sinc
  cut-off in [pi/3, pi] for kernels smaller than 13, [pi/5, pi] otherwise; final-stage sinc [pi/3, pi].
* Generalized/plateau beta: when the range straddles 1 it is drawn from [lo, 1] or [1, hi] with p 1/2
  each (heavy- and light-tailed shapes equally likely), otherwise uniformly in the range.
* Second-stage resize is relative to the *final LR size* (scale in [0.3, 1.2] of H/scale), so "keep" still
  resamples to the LR size; second-stage up/down/keep p 0.3/0.4/0.3 (INVSR.md gives none; Real-ESRGAN's).
  First-stage resize is relative to the HR size. Sizes are rounded, at least 1 pixel.
* Resampling is ``F.interpolate`` (area / bilinear / bicubic, no antialias, uniform choice) followed by a
  clamp to [0, 1]; noise results are clamped too. Blur pads by reflection (replicate when the image is
  smaller than the kernel radius). Poisson noise counts photons as ``x * 255`` (8-bit source images).
"""
from __future__ import annotations

from invsr_train.degradation.config import (
    DEFAULT_KERNEL_TYPE_PROBS,
    RESIZE_MODES,
    DegradationConfig,
    FinalStageConfig,
    StageConfig,
    default_first_stage,
    default_second_stage,
)
from invsr_train.degradation.jpeg import jpeg_compress, jpeg_quant_tables
from invsr_train.degradation.ops import add_gaussian_noise, add_noise, add_poisson_noise, blur, resize
from invsr_train.degradation.pipeline import Degrader, as_generator, degrade, degrade_with_params
from invsr_train.degradation.sampling import FinalParams, NoiseParams, ResizeParams, SampleParams, StageParams

__all__ = [
    "DEFAULT_KERNEL_TYPE_PROBS", "RESIZE_MODES", "DegradationConfig", "Degrader", "FinalParams", "FinalStageConfig",
    "NoiseParams", "ResizeParams", "SampleParams", "StageConfig", "StageParams", "add_gaussian_noise", "add_noise",
    "add_poisson_noise", "as_generator", "blur", "default_first_stage", "default_second_stage", "degrade",
    "degrade_with_params", "jpeg_compress", "jpeg_quant_tables", "resize",
]

"""Blur kernels for the training degradation: Gaussian family (iso/aniso), generalized, plateau, and sinc.

Every kernel is a square, odd-sized 2-D tensor that sums to 1, built on the CPU in float64 (they are tiny)
and moved to the data's device by the caller. The shapes follow the usual formulas for these families,
written from their definitions:

* ``Q(p) = p^T S^-1 p`` with ``S = R(theta) diag(sigma_x^2, sigma_y^2) R(theta)^T`` (isotropic: sigma_x =
  sigma_y, theta = 0),
* Gaussian ``exp(-Q/2)``, generalized Gaussian ``exp(-(Q^beta)/2)`` (beta < 1: heavy tails, beta > 1: flat
  top), plateau ``1 / (1 + Q^beta)``,
* sinc: the ideal circular low-pass ``omega_c * J1(omega_c r) / (2 pi r)`` (value ``omega_c^2 / (4 pi)`` at
  r = 0), i.e. the impulse response of a disc of radius ``omega_c`` (rad/pixel) in the frequency plane,
  truncated to the kernel size. Used to imitate ringing/overshoot.

All of these are point-symmetric (k(-p) = k(p)), so correlation (what ``conv2d`` computes) and convolution
coincide.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

#: The blur families drawn from the kernel-type probability table (sinc is drawn separately, by its own p).
KERNEL_TYPES: tuple[str, ...] = (
    "iso",
    "aniso",
    "generalized_iso",
    "generalized_aniso",
    "plateau_iso",
    "plateau_aniso",
)

#: All kinds a :class:`KernelSpec` may name.
KERNEL_KINDS: tuple[str, ...] = KERNEL_TYPES + ("sinc",)


def _check_size(size: int) -> None:
    """Kernels must be odd-sized so they have a centre pixel (no half-pixel shift)."""
    if size < 1 or size % 2 == 0:
        raise ValueError(f"kernel size must be a positive odd integer, got {size}")


def _grid(size: int) -> tuple[Tensor, Tensor]:
    """Pixel offsets (x, y) from the kernel centre, each size x size, float64."""
    _check_size(size)
    r = size // 2
    ax = torch.arange(-r, r + 1, dtype=torch.float64)
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    return xx, yy


def quadratic_form(size: int, sigma_x: float, sigma_y: float, theta: float) -> Tensor:
    """Q = p^T S^-1 p on the kernel grid, S the rotated diagonal covariance (see module docstring)."""
    if sigma_x <= 0 or sigma_y <= 0:
        raise ValueError(f"sigmas must be positive, got {sigma_x}, {sigma_y}")
    xx, yy = _grid(size)
    c, s = math.cos(theta), math.sin(theta)
    # Coordinates in the kernel's principal axes: u along sigma_x, v along sigma_y.
    u = c * xx + s * yy
    v = -s * xx + c * yy
    return (u / sigma_x) ** 2 + (v / sigma_y) ** 2


def _normalise(kernel: Tensor) -> Tensor:
    """Scale to unit sum: blur must keep the mean brightness (DC gain 1)."""
    total = kernel.sum()
    if not torch.isfinite(total) or total <= 0:
        raise ValueError("kernel has no positive mass")
    return kernel / total


def gaussian_kernel(size: int, sigma_x: float, sigma_y: float | None = None, theta: float = 0.0) -> Tensor:
    """Anisotropic (or isotropic when sigma_y is None/equal and theta 0) Gaussian kernel, sum 1."""
    sy = sigma_x if sigma_y is None else sigma_y
    return _normalise(torch.exp(-0.5 * quadratic_form(size, sigma_x, sy, theta)))


def generalized_gaussian_kernel(
    size: int, sigma_x: float, sigma_y: float | None = None, theta: float = 0.0, beta: float = 1.0
) -> Tensor:
    """Generalized Gaussian exp(-(Q^beta)/2), sum 1; beta = 1 is the plain Gaussian."""
    if beta <= 0:
        raise ValueError(f"beta must be positive, got {beta}")
    sy = sigma_x if sigma_y is None else sigma_y
    return _normalise(torch.exp(-0.5 * quadratic_form(size, sigma_x, sy, theta) ** beta))


def plateau_kernel(
    size: int, sigma_x: float, sigma_y: float | None = None, theta: float = 0.0, beta: float = 1.0
) -> Tensor:
    """Plateau-shaped kernel 1 / (1 + Q^beta), sum 1: flat top, polynomial tails."""
    if beta <= 0:
        raise ValueError(f"beta must be positive, got {beta}")
    sy = sigma_x if sigma_y is None else sigma_y
    return _normalise(1.0 / (1.0 + quadratic_form(size, sigma_x, sy, theta) ** beta))


def sinc_kernel(size: int, omega_c: float) -> Tensor:
    """Circular ideal low-pass with cut-off omega_c (rad/pixel, in (0, pi]), truncated to size, sum 1."""
    if not 0 < omega_c <= math.pi + 1e-9:
        raise ValueError(f"omega_c must be in (0, pi], got {omega_c}")
    xx, yy = _grid(size)
    r = torch.sqrt(xx**2 + yy**2)
    safe_r = torch.where(r > 0, r, torch.ones_like(r))
    k = omega_c * torch.special.bessel_j1(omega_c * safe_r) / (2 * math.pi * safe_r)
    k = torch.where(r > 0, k, torch.full_like(r, omega_c**2 / (4 * math.pi)))
    return _normalise(k)


def pad_kernel(kernel: Tensor, size: int) -> Tensor:
    """Zero-pad a centred odd kernel to size x size (same filter, bigger support) for batching."""
    _check_size(size)
    k = kernel.shape[-1]
    if k > size:
        raise ValueError(f"cannot pad a {k}x{k} kernel down to {size}x{size}")
    p = (size - k) // 2
    return torch.nn.functional.pad(kernel, (p, p, p, p))


@dataclass(frozen=True)
class KernelSpec:
    """The parameters of one drawn blur kernel; :meth:`build` makes the tensor.

    ``kind`` is one of :data:`KERNEL_KINDS`. Isotropic kinds use ``sigma_x`` only; ``beta`` is used by the
    generalized and plateau kinds, ``omega_c`` by sinc.
    """

    kind: str
    size: int
    sigma_x: float = 1.0
    sigma_y: float = 1.0
    theta: float = 0.0
    beta: float = 1.0
    omega_c: float = math.pi

    def __post_init__(self) -> None:
        if self.kind not in KERNEL_KINDS:
            raise ValueError(f"unknown kernel kind {self.kind!r}: choose one of {', '.join(KERNEL_KINDS)}")
        _check_size(self.size)

    @property
    def isotropic(self) -> bool:
        """True for the rotation-invariant kinds (all *_iso kinds and sinc)."""
        return self.kind == "sinc" or self.kind == "iso" or self.kind.endswith("_iso")

    def build(self) -> Tensor:
        """The kernel as a size x size float64 CPU tensor summing to 1."""
        if self.kind == "sinc":
            return sinc_kernel(self.size, self.omega_c)
        sx = self.sigma_x
        sy, theta = (sx, 0.0) if self.isotropic else (self.sigma_y, self.theta)
        if self.kind in ("iso", "aniso"):
            return gaussian_kernel(self.size, sx, sy, theta)
        if self.kind.startswith("generalized"):
            return generalized_gaussian_kernel(self.size, sx, sy, theta, self.beta)
        return plateau_kernel(self.size, sx, sy, theta, self.beta)

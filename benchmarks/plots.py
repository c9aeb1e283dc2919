"""PNG plots of a report (matplotlib, Agg): stage breakdown per configuration, latency against steps."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from invsr_runtime.tempfiles import atomic_write

from .report import PAPER_A100_MS, STAGE_TITLES, TABLE_STAGES

logger = logging.getLogger(__name__)

COLORS = {"predictor": "#4c72b0", "vae_encoder": "#55a868", "unet": "#c44e52", "vae_decoder": "#8172b2"}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _ok(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in report["configs"] if r.get("status") == "ok"]


def _label(r: dict[str, Any]) -> str:
    return f"{r['backend']}\n{r['precision']} b{r['batch']} s{r['steps']}"


def stage_breakdown(report: dict[str, Any], path: Path) -> Path | None:
    """Stacked bars: ms per image of each stage (UNet x steps) per configuration, and the measured end to end."""
    records = _ok(report)
    if not records:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(7.5, 1.3 * len(records) + 3.5), 5))
    for i, r in enumerate(records):
        bottom = 0.0
        for s in TABLE_STAGES:
            if s not in r.get("stages", {}):
                continue
            value = r["stages"][s]["median"] * (r["steps"] if s == "unet" else 1) / r["batch"]
            ax.bar(i, value, bottom=bottom, color=COLORS[s], label=STAGE_TITLES[s])
            bottom += value
        ax.plot(i, r["per_image_ms"], "k_", markersize=28, markeredgewidth=2)
    ax.plot([], [], "k_", markersize=14, markeredgewidth=2, label="measured end to end")
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    ax.legend(unique.values(), unique.keys(), fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_xticks(range(len(records)), [_label(r) for r in records], fontsize=7)
    ax.set_ylabel("ms per image (median)")
    ax.set_title(f"Stage breakdown, {report['settings']['base']}, tile {report['settings']['tile']}", fontsize=10)
    return _save(fig, plt, path)


def latency_vs_steps(report: dict[str, Any], path: Path) -> Path | None:
    """ms per image against steps, one line per backend x precision x batch, with the paper's A100 line."""
    records = _ok(report)
    if not records:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 5))
    series: dict[tuple, list[tuple[int, float]]] = {}
    for r in records:
        series.setdefault((r["backend"], r["precision"], r["batch"]), []).append((r["steps"], r["per_image_ms"]))
    for (backend, precision, batch), points in series.items():
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], "o-", label=f"{backend} {precision} b{batch}")
    steps = sorted(PAPER_A100_MS)
    ax.plot(steps, [PAPER_A100_MS[s] for s in steps], "k--", label="paper, A100 (per image)")
    ax.set_yscale("log")
    ax.set_xticks(steps)
    ax.set_xlabel("sampling steps")
    ax.set_ylabel("ms per image (median, log scale)")
    ax.set_title(f"Latency against steps, {report['settings']['base']}", fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(True, which="both", alpha=0.3)
    return _save(fig, plt, path)


def _save(fig: Any, plt: Any, path: Path) -> Path:
    fig.tight_layout()
    atomic_write(path, lambda fh: fig.savefig(fh, dpi=110, format="png"))
    plt.close(fig)
    logger.info("wrote %s", path)
    return path


def write_plots(report: dict[str, Any], folder: Path) -> list[str]:
    """Both plots into `folder`; the file names written."""
    written = [stage_breakdown(report, folder / "stages.png"), latency_vs_steps(report, folder / "steps.png")]
    return [p.name for p in written if p is not None]

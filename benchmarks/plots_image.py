"""The image mode's plot: device-bound efficiency against the (simulated) device's ms per tile."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .plots import _pyplot


def write(report: dict[str, Any], out: Path) -> list[str]:
    """efficiency.png (one line per device count); [] when no row has an efficiency."""
    rows = [r for r in report["rows"] if r.get("efficiency") is not None and r.get("device_ms_per_tile")]
    if not rows:
        return []
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for n in sorted({r["devices"] for r in rows}):
        pts = sorted((r["device_ms_per_tile"], r["efficiency"]) for r in rows if r["devices"] == n)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{n} device{'s' if n > 1 else ''}")
    ax.axhline(0.95, color="grey", linestyle="--", linewidth=1, label="95% target")
    ax.set_xlabel("device ms per 128-px tile")
    ax.set_ylabel("device-bound efficiency")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"{report['image']} LR, colour fix {report['color_fix']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "efficiency.png", dpi=100)
    plt.close(fig)
    return ["efficiency.png"]

"""report.md: the tables a person reads, rendered from the report dict (see ``report.build_report``)."""
from __future__ import annotations

from typing import Any, Iterable, Sequence

from .machine import short_name
from .report import STAGE_TITLES, TABLE_STAGES

PLOTS = (("stages.png", "Stage breakdown per configuration (ms per image, stacked)"),
         ("steps.png", "End-to-end latency per image against the number of steps"))


def ms(value: float | None) -> str:
    """Milliseconds with sensible precision ('-' for missing)."""
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def ratio(value: float | None, digits: int = 2) -> str:
    """A speed-up as '1.23x' ('-' for missing)."""
    return "-" if value is None else f"{value:.{digits}f}x"


def pct(value: float | None) -> str:
    """A share as a percentage ('-' for missing)."""
    if value is None:
        return "-"
    return f"{100 * value:.1f}%" if value >= 0.001 else f"{100 * value:.3f}%"


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """A Markdown table (numbers right-aligned after the first columns)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def _gpu_memory(memory: dict[str, Any]) -> str:
    """'torch peak / device used' in MiB ('-' on CPU)."""
    peak, used = memory.get("gpu_peak_mib"), memory.get("gpu_used_mib")
    if peak is None and used is None:
        return "-"
    return f"{ms(peak)} / {ms(used)}"


def _psnr(q: dict[str, Any] | None) -> str:
    if not q:
        return "-"
    return "inf (identical)" if q["psnr_db"] == "inf" else f"{q['psnr_db']:.1f}"


def _ok(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in report["configs"] if r.get("status") == "ok"]


def header_section(report: dict[str, Any]) -> list[str]:
    s = report["settings"]
    lines = [f"# invsr-bench: {s['base']} on {short_name(report['machine'])}", ""]
    if report.get("description"):
        lines += [report["description"], ""]
    peak = (report.get("compute") or {}).get("peak") or {}
    lines += [
        f"Run {report['created']} with `{report['command']}`.",
        "",
        f"One {s['tile']} px LR tile -> {4 * s['tile']} px (x4), base `{s['base']}`, predictor `{s['predictor']}`, "
        f"device `{s['device']}`. Each number is the median (p90 in parentheses) of {s['iters']} timed calls after "
        f"{s['warmup']} warm-up call(s); the first call is timed on its own (compile / session set-up) and "
        f"excluded. Clock: {'CUDA events' if s['device'] == 'cuda' else 'perf_counter'}. "
        f"torch-fast compile: {'on' if s['compile'] else 'OFF (--no-compile)'}.",
    ]
    busy = contention(report)
    if busy:
        lines += ["", f"**Caution:** other processes took more than a quarter of a core while {busy} was timed "
                      "(column `others' cores`); those timings are pessimistic."]
    if peak:
        lines += ["", f"Peak rate measured in this run: {peak['flops_per_s'] / 1e9:,.1f} GFLOP/s "
                      f"({peak['dtype']} {peak['n']}^3 matmul on {peak['device']}, {peak.get('threads')} threads)."]
    return lines + [""]


def others_cores(r: dict[str, Any]) -> tuple[float, float]:
    """Cores other processes used during the end-to-end timing and at most during any stage timing."""
    stage = max((v.get("other_cores", 0.0) + v.get("steal_cores", 0.0) for v in r.get("stages", {}).values()),
                default=0.0)
    e2e = r["end_to_end"].get("other_cores", 0.0) + r["end_to_end"].get("steal_cores", 0.0)
    return e2e, stage


def contention(report: dict[str, Any], threshold: float = 0.25) -> str:
    """Configurations during whose timing other processes used more than `threshold` cores (empty when none)."""
    busy = [f"{r['backend']} {r['precision']} b{r['batch']} s{r['steps']}" for r in _ok(report)
            if max(others_cores(r)) > threshold]
    return ", ".join(busy)


def headline_section(report: dict[str, Any]) -> list[str]:
    rows = [(h["backend"], h["precision"], ms(h["per_image_ms"]), ratio(h["speedup_vs_torch_eager"]))
            for h in report.get("headline", [])]
    if not rows:
        return []
    h0 = report["headline"][0]
    return [f"## Headline ({h0['steps']} step, batch {h0['batch']}, end to end)", "",
            *table(("backend", "precision", "ms / image", "speed-up vs torch-eager"), rows), ""]


def end_to_end_section(report: dict[str, Any]) -> list[str]:
    rows = []
    for r in _ok(report):
        e = r["end_to_end"]
        rows.append((
            r["backend"], r["precision"], r["batch"], r["steps"], f"{ms(e['median'])} ({ms(e['p90'])})",
            ms(r["per_image_ms"]), f"{r['throughput_ips']:.3g}", ratio(r.get("speedup_vs_torch_eager")),
            ratio(r.get("speedup_vs_paper_a100"), 4 if (r.get("speedup_vs_paper_a100") or 1) < 0.01 else 2),
            pct((r.get("floor_share") or {}).get("end_to_end")),
            _psnr(r.get("quality")), f"{r['quality']['ssim']:.4f}" if r.get("quality") else "-",
            f"{r['memory']['peak_rss_mib']:,.0f}", _gpu_memory(r["memory"]),
            " / ".join(f"{x:.2f}" for x in others_cores(r)),
        ))
    head = ("backend", "precision", "batch", "steps", "ms / batch", "ms / image", "images/s", "vs torch-eager",
            "vs paper A100", "floor share", "PSNR dB", "SSIM", "peak RSS MiB", "GPU MiB (torch peak / device used)",
            "others' cores (e2e / worst stage)")
    return ["## End to end (one tile chain)", "", *table(head, rows), "",
            "`vs paper A100`: the paper's per-image time for the same step count (117 / 149 / 176 / 207 / 244 ms) "
            "divided by ours; > 1 means faster than the paper's A100. PSNR / SSIM: tile 0 of the batch against "
            "the fp32 PyTorch reference (batch 1) on the same photo tile and noise. `others' cores`: CPU cores "
            "that other processes (and the hypervisor's steal) took while this configuration was timed.", ""]


def stages_section(report: dict[str, Any]) -> list[str]:
    seen, rows = set(), []
    for r in _ok(report):
        key = (r["backend"], r["precision"], r["batch"])
        if key in seen or not r.get("stages"):
            continue
        seen.add(key)
        cells = [f"{ms(r['stages'][s]['median'])} ({ms(r['stages'][s]['p90'])})" if s in r["stages"] else "-"
                 for s in TABLE_STAGES]
        speed = [ratio((r.get("stage_speedup_vs_torch_eager") or {}).get(s)) for s in TABLE_STAGES]
        share = [pct((r.get("floor_share") or {}).get(s)) for s in TABLE_STAGES]
        rows.append((*key, *cells, " / ".join(speed), " / ".join(share)))
    head = ("backend", "precision", "batch", *(STAGE_TITLES[s] + " ms" for s in TABLE_STAGES),
            "speed-up vs torch-eager (same order)", "floor share (same order)")
    return ["## Stages (ms per call of one batch)", "", *table(head, rows), ""]


def compute_section(report: dict[str, Any]) -> list[str]:
    c = report.get("compute")
    if not c:
        return []
    best = {s: min((r["stages"][s]["median"] / r["batch"] for r in _ok(report) if s in r.get("stages", {})),
                   default=None) for s in TABLE_STAGES}
    floors = c.get("floor_ms_per_tile") or {}
    rows = [(STAGE_TITLES[s], f"{c['gmac_per_tile'][s]:,.1f}", ms(floors.get(s)), ms(best[s]),
             pct(floors[s] / best[s]) if best[s] and s in floors else "-") for s in TABLE_STAGES]
    return ["## Compute per tile and the floor", "",
            f"MACs counted from the models ({c['counted_with']}); floor = 2 x MACs / measured peak rate. "
            "A share above 100% means a faster kernel than the measured matmul peak, or fewer MACs than the "
            "model: ONNX Runtime graphs compute each nearest-2x upsample conv as four 2x2 convs "
            "(README, 'ONNX Runtime graphs are rewritten for speed').", "",
            *table(("stage", "GMAC / tile", "floor ms / tile", "best measured ms / tile", "share of floor"), rows), ""]


def setup_section(report: dict[str, Any]) -> list[str]:
    rows = []
    for s in report.get("setup", []):
        info = s.get("info") or {}
        engines = s.get("engines") or {}
        export = ", ".join(f"b{b}: {'cached' if e['reused'] else _seconds(e['seconds'])}"
                           for b, e in engines.items()) or "-"
        rows.append((s["backend"], s["precision"], f"{info['load_s']:.1f}" if "load_s" in info else "-", export,
                     ", ".join(info.get("graph_rewrites") or []) or "-", _first_call_overhead(report, s),
                     f"{s['worker']['peak_rss_mib']:,.0f}" if s.get("worker") else "-"))
    return ["## Set-up costs (not in the latencies)", "",
            *table(("backend", "precision", "model load s", "engine export", "graph rewrites",
                    "first-call overhead s (compile / init)", "worker lifetime peak RSS MiB"), rows), ""]


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f} s"


def _first_call_overhead(report: dict[str, Any], setup: dict[str, Any]) -> str:
    """Sum over stages of (first call - median), per batch, for this backend x precision."""
    parts = []
    for r in _ok(report):
        if (r["backend"], r["precision"]) == (setup["backend"], setup["precision"]) and r["steps"] == min(
                x["steps"] for x in _ok(report)):
            extra = sum(max(0.0, v["first_call_ms"] - v["median"]) for v in r.get("stages", {}).values()) / 1e3
            parts.append(f"b{r['batch']}: {extra:.1f}")
    return ", ".join(parts) or "-"


def skipped_section(report: dict[str, Any]) -> list[str]:
    seen, lines = set(), []
    for r in report["configs"]:
        if r.get("status") in ("skipped", "error"):
            key = (r["backend"], r["precision"], r["status"], r.get("reason"))
            if key not in seen:
                seen.add(key)
                lines.append(f"- **{r['backend']} {r['precision']}**: {r['status']}: {r.get('reason')}")
    return ["## Skipped and failed configurations", "", *lines, ""] if lines else []


def machine_section(report: dict[str, Any]) -> list[str]:
    m = report["machine"]
    libs = ", ".join(f"{k} {v}" for k, v in m["libraries"].items() if v)
    gpu = m.get("gpu")
    gpu_text = (f"{gpu['name']} x{gpu['count']}, {gpu['memory_gib']} GiB, CC {gpu['compute_capability']}, "
                f"CUDA {gpu['cuda_runtime']}, driver {gpu['driver']}") if gpu else "none"
    rows = [("CPU", f"{m['cpu']} ({m['cores_physical']} physical / {m['cores_logical']} logical cores; "
                    f"{', '.join(m['cpu_flags']) or '-'})"),
            ("RAM", f"{m['ram_gib']} GiB"), ("GPU", gpu_text), ("OS", m["os"]), ("Python", m["python"]),
            ("libraries", libs), ("torch threads", m.get("torch_threads")),
            ("load average at start / end", f"{m.get('load_average_at_start')} / {report.get('load_average_at_end')}")]
    return ["## Machine", "", *table(("", ""), rows), ""]


def plots_section(report: dict[str, Any]) -> list[str]:
    lines = ["## Plots", ""]
    for name, title in PLOTS:
        if name in report.get("plots", []):
            lines += [f"![{title}]({name})", ""]
    return lines if len(lines) > 2 else []


def render(report: dict[str, Any]) -> str:
    """The whole report.md."""
    sections = (header_section, headline_section, end_to_end_section, stages_section, compute_section,
                setup_section, skipped_section, plots_section, machine_section)
    lines: list[str] = []
    for section in sections:
        lines += section(report)
    return "\n".join(lines).rstrip() + "\n"

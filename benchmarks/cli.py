"""`invsr-bench`: latency per stage and end to end, memory and quality drift of every backend x precision.

    invsr-bench --out DIR [--base synthetic:full] [--backends torch-eager,torch-fast,onnxruntime,tensorrt]
                [--precisions fp32,fp16,int8,fp8] [--steps 1,3,5] [--tile 128] [--batch 1,8]
                [--warmup N] [--iters N]

Writes DIR/report.json, DIR/report.md, DIR/stages.png, DIR/steps.png (and DIR/work/: job files,
logs, drift images). Configurations this machine cannot run are reported as skipped with the reason.
Exit code 0 when every runnable configuration ran, 1 when one failed, 2 for bad options.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import shlex
import sys
from pathlib import Path
from typing import Any, NoReturn, Sequence

from invsr_runtime.outdir import outdir_problem
from invsr_runtime.signals import exit_code, terminate_like_interrupt
from invsr_runtime.tempfiles import atomic_write
from invsr_runtime.warning_lines import warnings_as_lines
from invsr_train.models import BASE_HELP, PREDICTOR_HELP

from . import engines as engine_cache
from .child import log_tail, run_child
from .runners import BENCH_BACKENDS, ENGINE_BACKENDS, PRECISIONS, skip_reason

logger = logging.getLogger("benchmarks")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see invsr-bench --help)", file=sys.stderr)
        raise SystemExit(2)


def _csv(kind: type, choices: Sequence[str] | None = None):
    """argparse type for comma-separated lists (validated against `choices`)."""
    def parse(text: str) -> list:
        try:
            items = [kind(x.strip()) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__}s, got {text!r}") from None
        bad = [x for x in items if choices is not None and x not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"{bad or text!r}: choose from {', '.join(choices or [])}")
        if kind is int and any(x < 1 for x in items):
            raise argparse.ArgumentTypeError(f"values must be >= 1, got {text!r}")
        return list(dict.fromkeys(items))
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="invsr-bench", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, help="report folder (created); required unless --render")
    p.add_argument("--render", type=Path, metavar="DIR",
                   help="only re-render DIR/report.md and the plots from DIR/report.json (no benchmark)")
    p.add_argument("--base", default="synthetic:full",
                   help=BASE_HELP)
    p.add_argument("--predictor", default="synthetic", help=PREDICTOR_HELP)
    p.add_argument("--backends", type=_csv(str, BENCH_BACKENDS), default=list(BENCH_BACKENDS))
    p.add_argument("--precisions", type=_csv(str, PRECISIONS), default=list(PRECISIONS))
    p.add_argument("--steps", type=_csv(int), default=[1], help="step counts, e.g. 1,3,5 (each 1..5)")
    p.add_argument("--batch", type=_csv(int), default=[1], help="tiles per call, e.g. 1,8")
    p.add_argument("--tile", type=int, default=None, help="LR tile (default: the base's: 128, 32 for synthetic:tiny)")
    p.add_argument("--warmup", type=int, default=3, help="warm-up calls before timing (the first call counts)")
    p.add_argument("--iters", type=int, default=10, help="timed calls per measurement")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--quiet-wait", type=float, default=0.0, metavar="SECONDS",
                   help="before each measurement wait up to this long for other processes to leave the CPU "
                        "(shared machines; the cores they used anyway are recorded either way)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (tile_noise)")
    p.add_argument("--no-compile", dest="compile", action="store_false",
                   help="torch-fast without torch.compile (for quick checks; real reports compile)")
    p.add_argument("--compile-mode", default=None,
                   help="torch.compile mode (default: reduce-overhead on GPU, default on CPU)")
    p.add_argument("--engines", type=Path, default=None,
                   help="engine-folder cache (default $INVSR_TRT_CACHE/bench-engines)")
    p.add_argument("--fresh-engines", action="store_true", help="re-export engine folders even when cached")
    p.add_argument("--calib-tiles", type=int, default=None,
                   help="int8 / fp8 calibration tiles passed to invsr-export (default: its own, 32)")
    p.add_argument("--export-validate", action="store_true", help="let invsr-export validate (slow at full size)")
    p.add_argument("--description", default="", help="free text shown at the top of report.md (what, why, caveats)")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details to stderr")
    img = p.add_argument_group("image mode (whole images through the runtime's tile scheduler)")
    img.add_argument("--image", default=None, metavar="WxH|FILE",
                     help="time whole images, e.g. 1024x1024 (a synthetic photo) or an image file")
    img.add_argument("--simulate-device-ms", type=_csv(float), default=None, metavar="X[,Y]",
                     help="image mode against a simulated device taking X ms per tile (no models needed)")
    img.add_argument("--devices", type=_csv(int), default=[1], metavar="N[,M]",
                     help="simulated device counts (default 1)")
    img.add_argument("--color-fix", default="none", choices=("none", "wavelet", "ycbcr"))
    img.add_argument("--no-memory", action="store_true", help="skip the peak-memory child processes")
    return p


def resolve_device(choice: str) -> str:
    """'cuda' when asked for or (auto) when PyTorch sees a GPU, else 'cpu'."""
    if choice != "auto":
        return choice
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def default_tile(base: str) -> int:
    """The base's LR tile: 32 for synthetic:tiny, 128 otherwise."""
    from invsr_train.models.base import FULL_TILE, SYNTHETIC_PREFIX, SYNTHETIC_TILES

    if base.startswith(SYNTHETIC_PREFIX):
        return SYNTHETIC_TILES.get(base[len(SYNTHETIC_PREFIX):], FULL_TILE)
    return FULL_TILE


class Bench:
    """One invsr-bench run: the reference, then one worker per backend x precision, then the reports."""

    def __init__(self, args: argparse.Namespace, argv: Sequence[str]) -> None:
        self.args = args
        self.argv = list(argv)
        self.out: Path = args.out
        self.work = self.out / "work"
        self.device = resolve_device(args.device)
        self.tile = args.tile or default_tile(args.base)
        self.cache = args.engines or engine_cache.default_cache()
        self.records: list[dict[str, Any]] = []
        self.setup: list[dict[str, Any]] = []

    # ------------------------------------------------------------------------------------- workers
    def job(self, mode: str, backend: str, precision: str, **extra: Any) -> dict[str, Any]:
        a = self.args
        return {"mode": mode, "steps": a.steps, "batches": a.batch, "warmup": a.warmup, "iters": a.iters,
                "seed": a.seed, "outputs": str(self.work), "log_level": "INFO", "quiet_wait_s": a.quiet_wait,
                "options": {"backend": backend, "precision": precision, "base": a.base, "predictor": a.predictor,
                            "device": self.device, "tile": self.tile, "engines": extra.pop("engines", {}),
                            "compile": a.compile, "compile_mode": a.compile_mode}, **extra}

    def run_worker(self, name: str, job: dict[str, Any]) -> tuple[Any, list[dict[str, Any]], Path]:
        """Run one worker process; its result lines, exit status and log path."""
        job_path, result_path, log = (self.work / f"{name}.job.json", self.work / f"{name}.results.jsonl",
                                      self.work / "logs" / f"{name}.log")
        result_path.unlink(missing_ok=True)
        job_path.write_text(json.dumps({**job, "result_path": str(result_path)}, indent=1), encoding="utf-8")
        child = run_child([sys.executable, "-m", "benchmarks.worker", str(job_path)], log, stdout_to_log=False)
        lines = []
        if result_path.is_file():
            lines = [json.loads(x) for x in result_path.read_text(encoding="utf-8").splitlines() if x.strip()]
        return child, lines, log

    # ------------------------------------------------------------------------------------- phases
    def run_reference(self) -> dict[str, Any] | None:
        """fp32 PyTorch reference: peak matmul rate, MACs per stage, reference images per step count."""
        print("[ref] fp32 PyTorch reference: peak matmul rate, MACs per stage, reference images", flush=True)
        child, lines, log = self.run_worker("reference", self.job("reference", "torch-eager", "fp32"))
        ref = next((x for x in lines if x["kind"] == "reference"), None)
        if ref is None:
            print(f"[ref] FAILED (exit {child.returncode}): {log_tail(log, 3)}; drift and floors will be missing",
                  flush=True)
            return None
        ref["worker"] = {"seconds": child.seconds, "peak_rss_mib": child.peak_rss_mib}
        peak = ref["peak"]["flops_per_s"] / 1e9
        gmac = sum(ref["macs_per_tile"].values()) / 1e9
        print(f"[ref] done in {child.seconds:.0f} s: peak {peak:,.1f} GFLOP/s, {gmac:,.1f} GMAC per tile (1 UNet step)",
              flush=True)
        return ref

    def skip(self, backend: str, precision: str, status: str, reason: str) -> None:
        for batch in self.args.batch:
            for steps in self.args.steps:
                self.records.append({"backend": backend, "precision": precision, "batch": batch, "steps": steps,
                                     "status": status, "reason": reason})

    def prepare_engines(self, backend: str, precision: str) -> tuple[dict[int, str], dict[str, Any], str | None]:
        """Engine folders per batch (exported or cached), their costs, and the first export error."""
        folders, costs = {}, {}
        for batch in self.args.batch:
            log = self.work / "logs" / f"export-{backend}-{precision}-b{batch}.log"
            print(f"      engines {backend} {precision} b{batch}: exporting or reusing under {self.cache}", flush=True)
            res = engine_cache.prepare(self.cache, backend, self.args.base, self.args.predictor, precision, self.tile,
                                       batch, log, fresh=self.args.fresh_engines, validate=self.args.export_validate,
                                       calib_tiles=self.args.calib_tiles)
            costs[str(batch)] = {"folder": str(res.folder) if res.folder else None, "reused": res.reused,
                                 "seconds": res.seconds, "peak_rss_mib": res.peak_rss_mib}
            if res.error:
                return folders, costs, res.error
            folders[batch] = str(res.folder)
        return folders, costs, None

    def run_pair(self, index: int, total: int, backend: str, precision: str, reference: dict[str, Any] | None) -> None:
        """Skip, or export engines (engine backends) and run the worker for one backend x precision."""
        tag = f"[{index}/{total}] {backend} {precision}"
        reason = skip_reason(backend, precision, self.device)
        if reason:
            print(f"{tag}: skipped ({reason})", flush=True)
            self.skip(backend, precision, "skipped", reason)
            return
        print(f"{tag}: running", flush=True)
        entry: dict[str, Any] = {"backend": backend, "precision": precision}
        engines: dict[int, str] = {}
        if backend in ENGINE_BACKENDS:
            engines, entry["engines"], error = self.prepare_engines(backend, precision)
            if error:
                print(f"{tag}: ERROR {error}", flush=True)
                self.skip(backend, precision, "error", error)
                self.setup.append(entry)
                return
        refs = (reference or {}).get("files", {})
        name = f"{backend}-{precision}"
        job = self.job("bench", backend, precision, engines=engines, references=refs)
        child, lines, log = self.run_worker(name, job)
        entry["worker"] = {"seconds": child.seconds, "peak_rss_mib": child.peak_rss_mib, "returncode": child.returncode}
        entry["info"] = next((x["info"] for x in lines if x["kind"] == "info"), None)
        self.setup.append(entry)
        got = [x for x in lines if x["kind"] == "record"]
        self.records += [{k: v for k, v in x.items() if k != "kind"} for x in got]
        self._missing(backend, precision, got, child, log)

    def _missing(self, backend: str, precision: str, got: list[dict[str, Any]], child: Any, log: Path) -> None:
        """Error records for configurations a crashed worker never reported."""
        done = {(x["batch"], x["steps"]) for x in got}
        reason = f"worker exited with code {child.returncode}: {log_tail(log, 2)}"
        for batch in self.args.batch:
            for steps in self.args.steps:
                if (batch, steps) not in done:
                    print(f"  {backend} {precision} b{batch} s{steps}: ERROR {reason}", flush=True)
                    self.records.append({"backend": backend, "precision": precision, "batch": batch,
                                         "steps": steps, "status": "error", "reason": reason})

    # ------------------------------------------------------------------------------------- report
    def meta(self, machine: dict[str, Any], started: str) -> dict[str, Any]:
        a = self.args
        return {
            "tool": "invsr-bench", "created": started, "command": shlex.join(["invsr-bench", *self.argv]),
            "description": a.description, "machine": machine,
            "settings": {"base": a.base, "predictor": a.predictor, "tile": self.tile, "device": self.device,
                         "backends": a.backends, "precisions": a.precisions, "steps": a.steps, "batches": a.batch,
                         "warmup": a.warmup, "iters": a.iters, "seed": a.seed, "compile": a.compile,
                         "compile_mode": a.compile_mode, "engine_cache": str(self.cache),
                         "calib_tiles": a.calib_tiles, "quiet_wait_s": a.quiet_wait},
        }

    def write_reports(self, meta: dict[str, Any], reference: dict[str, Any] | None) -> dict[str, Any]:
        from . import markdown, plots
        from .report import build_report, write_json

        report = build_report(meta, reference, self.records, self.setup)
        report["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
        report["plots"] = plots.write_plots(report, self.out)
        write_json(report, self.out / "report.json")
        _write_text(self.out / "report.md", markdown.render(report))
        return report

    def run(self) -> int:
        from .machine import describe

        self.work.mkdir(parents=True, exist_ok=True)
        started = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        machine = describe()
        pairs = [(b, p) for b in self.args.backends for p in self.args.precisions]
        print(f"invsr-bench: {self.args.base}, tile {self.tile}, device {self.device}, {len(pairs)} backend x "
              f"precision pairs x steps {self.args.steps} x batch {self.args.batch} -> {self.out}", flush=True)
        reference = self.run_reference()
        for i, (backend, precision) in enumerate(pairs, 1):
            self.run_pair(i, len(pairs), backend, precision, reference)
        report = self.write_reports(self.meta(machine, started), reference)
        print(summary(report), flush=True)
        print(f"wrote {self.out / 'report.json'}, {self.out / 'report.md'}, "
              f"{', '.join(str(self.out / p) for p in report['plots'])}", flush=True)
        failed = reference is None or any(r.get("status") == "error" for r in self.records)
        return 1 if failed else 0


def summary(report: dict[str, Any]) -> str:
    """The end-to-end table printed at the end of a run."""
    from .markdown import ms, ratio

    lines = [f"{'backend':<12}{'prec':<6}{'b':>3}{'s':>3}{'ms/image':>12}{'p90 ms':>12}{'img/s':>9}"
             f"{'vs eager':>10}{'PSNR':>9}  status"]
    for r in report["configs"]:
        head = f"{r['backend']:<12}{r['precision']:<6}{r['batch']:>3}{r['steps']:>3}"
        if r.get("status") != "ok":
            lines.append(f"{head}{'':>55}  {r['status']}: {r.get('reason', '')}"[:200])
            continue
        q = r.get("quality") or {}
        psnr = "-" if not q else ("inf" if q["psnr_db"] == "inf" else f"{q['psnr_db']:.1f}")
        lines.append(f"{head}{ms(r['per_image_ms']):>12}{ms(r['end_to_end']['p90']):>12}{r['throughput_ips']:>9.3g}"
                     f"{ratio(r.get('speedup_vs_torch_eager')):>10}{psnr:>9}  ok")
    return "\n".join(lines)


def render_only(folder: Path) -> int:
    """Re-write report.md and the PNGs of an existing report folder from its report.json."""
    from . import markdown, plots

    try:
        report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        print(f"error: cannot read {folder / 'report.json'} ({exc})", file=sys.stderr)
        return 2
    report["plots"] = plots.write_plots(report, folder)
    _write_text(folder / "report.md", markdown.render(report))
    print(f"re-rendered {folder / 'report.md'} and {', '.join(report['plots'])}")
    return 0


def _write_text(path: Path, text: str) -> None:
    data = text.encode("utf-8")
    atomic_write(path, lambda fh: fh.write(data))


def early_problem(args: argparse.Namespace) -> str | None:
    """What makes the run fail late, found before it starts: a tile or batch invsr-export refuses, an
    --out that cannot be written. One line, or None."""
    from invsr_export.exporter import ExportOptionError, check_batch, check_tile

    try:
        if args.tile is not None:
            check_tile(args.tile)
        for batch in args.batch:
            check_batch(batch)
    except ExportOptionError as exc:
        return str(exc)
    problem = outdir_problem(args.out)
    return f"--out {problem}; pass a writable report folder" if problem else None


def image_main(args: argparse.Namespace) -> int:
    """`--image`: whole images through the tile scheduler (simulated device, or the chosen backends)."""
    from .image_mode import render, run_image_mode

    if args.simulate_device_ms is None:
        args.resolved_device = resolve_device(args.device)
        args.tile_px = args.tile or default_tile(args.base)
    report = run_image_mode(args, args.out)
    print(render(report), flush=True)
    print(f"wrote {args.out / 'report.json'}, {args.out / 'report.md'}", flush=True)
    return 1 if any("error" in r for r in report["rows"] + report["memory"]) else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Console script `invsr-bench`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.render:
        return render_only(args.render)
    if args.out is None:
        parser.error("the following arguments are required: --out")
    if args.warmup < 0 or args.iters < 1:
        print("error: --warmup must be >= 0 and --iters >= 1 (see invsr-bench --help)", file=sys.stderr)
        return 2
    if any(s > 5 for s in args.steps):
        print("error: --steps takes 1..5 (see invsr-bench --help)", file=sys.stderr)
        return 2
    problem = early_problem(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="invsr-bench: %(message)s")
    if args.image is not None:
        args.command = shlex.join(["invsr-bench", *argv])
        return image_main(args)
    try:
        with terminate_like_interrupt(), warnings_as_lines():
            return Bench(args, argv).run()
    except KeyboardInterrupt as exc:
        print(f"error: {exc or 'interrupted'}", file=sys.stderr)
        return exit_code(exc)


if __name__ == "__main__":
    sys.exit(main())

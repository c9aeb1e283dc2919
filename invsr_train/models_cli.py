"""``invsr-models``: get the models onto a machine once, check them, use them anywhere.

    invsr-models download --out DIR [--base stabilityai/sd-turbo] [--predictor hub|none|FILE.pth] [--revision REV]
    invsr-models verify DIR

``download`` writes a bundle (SD-Turbo in diffusers layout + the noise predictor + a lock file with
sizes, sha256, source repo, revision and commit); run it again to resume. ``verify`` re-hashes a bundle
against its lock file (e.g. after copying it to an offline GPU machine). Then ``--base DIR`` and
``--predictor DIR`` work in every command. Errors: one ``error: ...`` line; exit 2 for bad arguments,
1 for a failed download or a bundle that does not verify. No torch is imported.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from invsr_runtime.signals import exit_code, terminate_like_interrupt

PROG = "invsr-models"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Download SD-Turbo + InvSR's noise predictor as one verified bundle.")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("download", help="fetch the models into a bundle folder (resumes an interrupted run)")
    d.add_argument("--out", required=True, type=Path, help="bundle folder (new, empty, or a bundle to complete)")
    d.add_argument("--base", default="stabilityai/sd-turbo", help="hub id of the base model (default: %(default)s)")
    d.add_argument("--predictor", default="hub",
                   help="hub (OAOA/InvSR's noise_predictor_sd_turbo_v5.pth), none, or a local .pth to include")
    d.add_argument("--revision", help="branch, tag or commit of --base (default: main)")
    v = sub.add_parser("verify", help="check a bundle's files against its lock file (sizes and sha256)")
    v.add_argument("dir", type=Path, help="bundle folder")
    p.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from invsr_train.models.bundle import BundleError
    from invsr_train.models.download import DownloadError

    try:
        with terminate_like_interrupt():
            return _download(args) if args.command == "download" else _verify(args.dir)
    except (BundleError, DownloadError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2 if _usage_error(e) else 1
    except KeyboardInterrupt as exc:
        print(f"error: {exc or 'interrupted'}: run the same command again to resume", file=sys.stderr)
        return exit_code(exc)


def _usage_error(e: Exception) -> bool:
    text = str(e)
    return text.startswith(("--out", "--predictor", "offline mode")) or "no invsr-models.lock.json" in text


def _download(args: argparse.Namespace) -> int:
    from invsr_train.models.bundle import total_bytes
    from invsr_train.models.download import download

    lock = download(args.out, args.base, args.predictor, args.revision, report=lambda line: print(line, file=sys.stderr))
    print(f"{args.out}: {len(lock.files)} files, {total_bytes(lock) / 1e9:.2f} GB, locked in {args.out / 'invsr-models.lock.json'}")
    print(f"use: --base {args.out}" + (f" --predictor {args.out}" if args.predictor != "none" else ""))
    return 0


def _verify(folder: Path) -> int:
    from tqdm import tqdm

    from invsr_train.models.bundle import read_lock, total_bytes, verify

    lock = read_lock(folder)
    with tqdm(total=total_bytes(lock), unit="B", unit_scale=True, desc="sha256", file=sys.stderr, leave=False) as bar:
        verify(folder, progress=bar.update)
    sources = ", ".join(f"{role} {s.get('repo') or s.get('path')}@{(s.get('commit') or 'local')[:12]}" for role, s in lock.sources.items())
    print(f"{folder}: {len(lock.files)} files, {total_bytes(lock) / 1e9:.2f} GB, all sizes and sha256 match ({sources})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

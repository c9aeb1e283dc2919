"""Download SD-Turbo + InvSR's noise predictor into one bundle folder, resumably, and lock it.

The hub's protocol, through huggingface_hub's own functions: ``HfApi.model_info`` resolves the revision
to a commit (``/api/models/{repo}/revision/{rev}``), ``HfApi.list_repo_tree`` lists files with sizes and
hashes (LFS sha256, or the git blob id for small files), ``get_hf_file_metadata`` asks ``HEAD /resolve``
for the download location (``X-Repo-Commit``, ``X-Linked-Etag``, ``X-Linked-Size``, ``Location``), and
``http_get`` streams it with a progress bar and ``Range`` resumption.

Why not ``snapshot_download``: in huggingface_hub 2.x every download goes to a per-process temporary file
that is deleted when the process stops, so an interrupted multi-GB UNet starts from zero again. Here a
partial file is kept under ``DIR/.invsr-models/partial/`` (named by the file's expected hash, so a
changed upstream file never resumes a stale prefix) and the next run asks only for the missing bytes.
Every finished file is checked against the hub's hash before it takes its final name; the lock file is
written last, atomically.
"""
from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from invsr_train.models.bundle import LOCK_NAME, Lock, LockedFile, write_lock
from invsr_train.models.errors import ModelLoadError
from invsr_train.models.files import git_blob_sha1, sha256_file
from invsr_train.models.hub_cache import hub_offline

logger = logging.getLogger(__name__)

DEFAULT_BASE = "stabilityai/sd-turbo"
PREDICTOR_REPO = "OAOA/InvSR"
PREDICTOR_FILE = "noise_predictor_sd_turbo_v5.pth"
#: What export needs from a diffusers repo: fp32 safetensors, configs, tokenizer (no fp16 copies, no .ckpt).
BASE_ALLOW = [
    "model_index.json",
    "scheduler/scheduler_config.json",
    "tokenizer/*",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
]
#: Files the bundle cannot work without (the tokenizer's exact files vary between repos).
BASE_REQUIRED = [p for p in BASE_ALLOW if "*" not in p]
WORK_DIR = ".invsr-models"


class DownloadError(ModelLoadError):
    """A download could not be done (one line: what failed and what to do)."""


@dataclass
class Planned:
    """One file to fetch: where from (repo, commit, path), its size and the hub's hash of it."""

    role: str
    repo: str
    commit: str
    path: str
    size: int
    sha256: str | None  # LFS files: the hub gives the sha256
    git_sha1: str | None  # small files: the git blob id

    @property
    def key(self) -> str:
        return self.sha256 or self.git_sha1 or self.path.replace("/", "_")


Report = Callable[[str], Any]


def download(
    out: Path,
    base: str = DEFAULT_BASE,
    predictor: str = "hub",
    revision: str | None = None,
    report: Report = logger.info,
) -> Lock:
    """Fetch the base (``base`` at ``revision``) and the predictor into ``out``; write and return its lock.

    ``predictor`` is ``hub`` (``OAOA/InvSR``'s released file), ``none``, or a local ``.pth`` to copy in.
    Re-running completes an interrupted download; files already complete are checked, not fetched.
    """
    out = Path(out)
    _check_out(out)
    from filelock import FileLock, Timeout

    work = out / WORK_DIR
    work.mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(str(work / "lock"), timeout=0):
            return _download_locked(out, base, predictor, revision, report)
    except Timeout as e:
        raise DownloadError(f"another invsr-models download is writing to {out}: wait for it, or use another --out") from e


def _download_locked(out: Path, base: str, predictor: str, revision: str | None, report: Report) -> Lock:
    repo, at = base.partition("@")[::2]
    revision = revision or at or "main"
    api = _api()
    plan, sources = _plan_repo(api, "base", repo, revision, BASE_ALLOW, BASE_REQUIRED)
    if predictor == "hub":
        extra, more = _plan_repo(api, "predictor", PREDICTOR_REPO, "main", [PREDICTOR_FILE], [PREDICTOR_FILE])
        plan, sources = plan + extra, {**sources, **more}
    elif predictor != "none":
        sources["predictor"] = {"repo": None, "path": str(Path(predictor).resolve())}
    total = sum(p.size for p in plan)
    report(f"{len(plan)} files, {_gb(total)} from {', '.join(s['repo'] + '@' + s['commit'][:12] for s in sources.values() if s.get('repo'))}")
    files = [_fetch(out, p, i, len(plan), report) for i, p in enumerate(plan, 1)]
    if predictor not in ("hub", "none"):
        files.append(_copy_local_predictor(Path(predictor), out, report))
    lock = Lock(files, sources)
    write_lock(out, lock)
    shutil.rmtree(out / WORK_DIR / "partial", ignore_errors=True)
    return lock


def _check_out(out: Path) -> None:
    """Refuse a non-empty folder that is not a bundle (finished or in progress): never mix into user files."""
    if out.exists() and not out.is_dir():
        raise DownloadError(f"--out {out} is a file: pass a folder")
    if out.is_dir() and any(out.iterdir()) and not ((out / LOCK_NAME).exists() or (out / WORK_DIR).exists()):
        raise DownloadError(f"--out {out} is a non-empty folder that is not a bundle: pass a new or empty folder")


def _api() -> Any:
    """An HfApi on the endpoint the environment names now (HF_ENDPOINT is read at call time)."""
    from huggingface_hub import HfApi

    if hub_offline():
        raise DownloadError("offline mode is on (HF_HUB_OFFLINE): downloading needs the hub; unset it on a machine with access")
    return HfApi(endpoint=_endpoint())


def _endpoint() -> str:
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def _plan_repo(
    api: Any, role: str, repo: str, revision: str, allow: list[str], required: list[str]
) -> tuple[list[Planned], dict[str, dict[str, Any]]]:
    """Resolve ``revision`` to a commit and list the allowed files with their sizes and hashes."""
    from huggingface_hub.hf_api import RepoFile
    from huggingface_hub.utils import filter_repo_objects

    try:
        commit = api.model_info(repo, revision=revision).sha
        tree = [f for f in api.list_repo_tree(repo, revision=commit, recursive=True) if isinstance(f, RepoFile)]
    except Exception as e:  # 401/404, DNS, refused connection, ...
        raise DownloadError(f"could not list {repo}@{revision} on {_endpoint()} ({_reason(e)})") from e
    chosen = list(filter_repo_objects(tree, allow_patterns=allow, key=lambda f: f.path))
    missing = sorted(set(required) - {f.path for f in chosen})
    if missing:
        raise DownloadError(f"{repo}@{revision} (commit {commit}) has no {missing[0]}: is it SD-Turbo / InvSR?")
    plan = [
        Planned(role, repo, commit, f.path, int(f.size), f.lfs.sha256 if f.lfs else None, None if f.lfs else f.blob_id)
        for f in sorted(chosen, key=lambda f: f.path)
    ]
    return plan, {role: {"repo": repo, "revision": revision, "commit": commit, "endpoint": _endpoint()}}


def _fetch(out: Path, p: Planned, i: int, n: int, report: Report) -> LockedFile:
    """One file: skip if complete and intact, else resume or start its partial file, check, rename."""
    dest = out / p.path
    tag = f"[{i}/{n}] {p.path} ({_gb(p.size)})"
    if dest.is_file() and dest.stat().st_size == p.size:
        digest = _matches(dest, p)
        if digest:
            report(f"{tag}: already complete")
            return LockedFile(p.path, p.size, digest, p.role)
    partial = out / WORK_DIR / "partial" / f"{p.key}.incomplete"
    partial.parent.mkdir(parents=True, exist_ok=True)
    have = partial.stat().st_size if partial.is_file() else 0
    if have > p.size:
        partial.unlink()
        have = 0
    report(f"{tag}: resuming at {_gb(have)}" if have else tag)
    _http_fetch(p, partial, have)
    digest = _matches(partial, p)
    if not digest:
        partial.unlink()
        raise DownloadError(f"{p.path} from {p.repo} does not match the hub's hash after download (removed): run the command again")
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(partial, dest)
    return LockedFile(p.path, p.size, digest, p.role)


def _matches(path: Path, p: Planned) -> str | None:
    """The file's sha256 if it equals the hub's hash (sha256 for LFS files, git blob id otherwise)."""
    digest = sha256_file(path)
    if p.sha256 is not None:
        return digest if digest == p.sha256 else None
    return digest if p.git_sha1 is None or git_blob_sha1(path) == p.git_sha1 else None


def _http_fetch(p: Planned, partial: Path, have: int) -> None:
    """HEAD /resolve for the location, then GET it from byte ``have`` on, appending to ``partial``."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    url = hf_hub_url(p.repo, p.path, revision=p.commit, endpoint=_endpoint())
    try:
        meta = get_hf_file_metadata(url, endpoint=_endpoint(), retry_on_errors=True)
        if meta.size is not None and meta.size != p.size:
            raise DownloadError(f"{p.path}: the hub lists {p.size} bytes but serves {meta.size}: run the command again")
        with open(partial, "ab") as f:
            http_get(meta.location, f, resume_size=have, headers=build_hf_headers(), expected_size=p.size,
                     displayed_filename=p.path)
    except DownloadError:
        raise
    except Exception as e:  # connection lost for good, 5xx, ...: the partial file stays for the next run
        raise DownloadError(f"downloading {p.path} from {p.repo} failed ({_reason(e)}): run the same command again to resume") from e


def _copy_local_predictor(src: Path, out: Path, report: Report) -> LockedFile:
    """Put a local predictor checkpoint into the bundle under the released file name."""
    if not src.is_file():
        raise DownloadError(f"--predictor {src}: no such file: pass hub, none or a .pth path")
    dest = out / PREDICTOR_FILE
    if src.resolve() != dest.resolve():
        shutil.copyfile(src, dest)
    report(f"{PREDICTOR_FILE}: copied from {src}")
    return LockedFile(PREDICTOR_FILE, dest.stat().st_size, sha256_file(dest), "predictor")


def _reason(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:200]}" if text else type(e).__name__


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n} B"

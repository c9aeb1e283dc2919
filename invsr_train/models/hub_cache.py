"""Find a model in a Hugging Face hub cache without the network (e.g. a cache copied from another machine).

The cache layout (``huggingface_hub``'s): ``<cache>/models--org--name/`` with ``refs/<branch>`` (a file
holding a commit hash), ``snapshots/<commit>/`` (the repo's files, links into ``blobs/``) and ``blobs/``.
The cache root is read *now* from ``HF_HUB_CACHE``, else ``HF_HOME/hub``, else huggingface_hub's default,
so a copied cache is found by setting either variable, even after huggingface_hub was imported.

Specs: ``org/name`` or ``org/name@revision`` (a branch, tag or commit hash); a path to a
``models--org--name`` folder also works. Without a revision ``refs/main`` is used, and when a copy lacks
``refs/`` (downloaded by commit hash), its only snapshot; several snapshots and no ref is ambiguous and
the error lists them.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from invsr_train.models.errors import ModelLoadError

DEFAULT_REVISION = "main"
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
REPO_FOLDER = re.compile(r"^models--([^/]+?)--([^/]+)$")


@dataclass(frozen=True)
class CachedSnapshot:
    """A resolved snapshot folder: where it is, which repo and commit it holds."""

    folder: Path
    repo_id: str
    commit: str


def hub_cache_dir() -> Path:
    """The hub cache root as the environment says now (``HF_HUB_CACHE`` > ``HF_HOME``/hub > default)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    try:
        from huggingface_hub import constants

        return Path(constants.HF_HUB_CACHE).expanduser()
    except ImportError:
        return Path.home() / ".cache" / "huggingface" / "hub"


def split_revision(spec: str) -> tuple[str, str | None]:
    """``org/name@rev`` -> (``org/name``, ``rev``); no ``@`` -> (spec, None)."""
    repo, sep, revision = spec.partition("@")
    return repo, (revision or None) if sep else None


def repo_folder(repo_id: str, cache: Path | None = None) -> Path:
    """``<cache>/models--org--name`` for a repo id."""
    return (cache or hub_cache_dir()) / ("models--" + repo_id.replace("/", "--"))


def resolve_repo_folder(storage: Path, revision: str | None, repo_id: str | None = None) -> CachedSnapshot:
    """The snapshot of ``revision`` (or main / the only one) inside a ``models--org--name`` folder."""
    match = REPO_FOLDER.match(storage.name)
    repo_id = repo_id or (f"{match.group(1)}/{match.group(2)}" if match else storage.name)
    snapshots = storage / "snapshots"
    where = f"in the hub cache {storage.parent}"
    if not snapshots.is_dir():
        raise ModelLoadError(
            f"{repo_id!r} is not {where} (no {storage.name}/snapshots/): set HF_HOME or HF_HUB_CACHE to the copied "
            "cache, or pass a local folder"
        )
    commit = _commit_of(storage, revision, repo_id)
    folder = snapshots / commit
    if not folder.is_dir():
        raise ModelLoadError(
            f"{repo_id!r}: revision {revision or DEFAULT_REVISION} points to commit {commit}, whose snapshot is not {where}"
        )
    return CachedSnapshot(folder, repo_id, commit)


def _commit_of(storage: Path, revision: str | None, repo_id: str) -> str:
    """Commit hash for a revision: a hash itself, a ref file, or (no revision, no main ref) the only snapshot."""
    if revision and _COMMIT.match(revision):
        return revision
    ref = storage / "refs" / (revision or DEFAULT_REVISION)
    if ref.is_file():
        return ref.read_text(encoding="utf-8").strip()
    found = sorted(p.name for p in (storage / "snapshots").iterdir() if p.is_dir())
    if revision is None and len(found) == 1:
        return found[0]
    if not found:
        raise ModelLoadError(f"{repo_id!r}: {storage}/snapshots/ is empty: copy the cache again")
    wanted = f"revision {revision!r} is not in refs/" if revision else "no refs/main and several snapshots"
    raise ModelLoadError(f"{repo_id!r}: {wanted} of {storage}: pass {repo_id}@<commit>, one of {', '.join(found)}")


def cached_snapshot(repo_id: str, revision: str | None) -> CachedSnapshot:
    """Offline lookup of ``repo_id`` at ``revision`` in the current hub cache."""
    return resolve_repo_folder(repo_folder(repo_id), revision, repo_id)


def hub_offline() -> bool:
    """True when HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE is set now (or was when huggingface_hub loaded)."""
    truthy = {"1", "on", "yes", "true"}
    env = any(os.environ.get(k, "").strip().lower() in truthy for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    try:
        from huggingface_hub import constants

        return env or bool(constants.HF_HUB_OFFLINE)
    except ImportError:
        return env

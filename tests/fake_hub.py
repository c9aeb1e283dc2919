"""A Hugging Face hub on 127.0.0.1 that answers the requests huggingface_hub 2.x makes to download a repo.

Modelled on what ``huggingface_hub`` reads (``hf_api.py``, ``file_download.py``, ``utils/_http.py``):

* ``GET /api/models/{repo}/revision/{rev}``: ``{"id", "sha", "siblings"}`` (``HfApi.model_info``);
  unknown revisions answer 404 with ``X-Error-Code: RevisionNotFound``, unknown repos ``RepoNotFound``.
* ``GET /api/models/{repo}/tree/{commit}?recursive=...``: file entries ``{"type", "oid", "size", "path",
  "lfs": {"oid", "size", "pointerSize"}}`` (``HfApi.list_repo_tree``; one page, no ``Link`` header).
* ``HEAD|GET /{repo}/resolve/{rev}/{path}``: small files answer 200 with ``ETag`` (the git blob id),
  ``X-Repo-Commit`` and ``Content-Length``; LFS files (weights) a 302 to the "CDN" with ``X-Linked-Etag``
  (the sha256), ``X-Linked-Size``, ``X-Repo-Commit`` and ``Location``, as the hub does.
* The CDN is a second server on another port (another origin, so huggingface_hub does not follow the
  redirect on HEAD, exactly as with the real CDN) and honours ``Range: bytes=N-`` with 206 answers.

``stall_after[path] = n`` makes the CDN send the first ``n`` bytes of that file and then hang until
:attr:`release` is set (to interrupt a client mid-file); ``log`` records every request (method, path, Range).
"""
from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

LFS_SUFFIXES = (".safetensors", ".pth", ".bin", ".ckpt")


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    files: dict[str, bytes]
    commit: str
    refs: dict[str, str] = field(default_factory=dict)


class FakeHub:
    """Two loopback servers (hub + CDN) sharing this state; use as a context manager."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.log: list[tuple[str, str, str | None]] = []
        self.stall_after: dict[str, int] = {}
        self.release = threading.Event()
        self._blobs: dict[str, tuple[str, bytes]] = {}
        self._servers: list[ThreadingHTTPServer] = []

    def add_repo(self, repo_id: str, files: dict[str, bytes], commit: str) -> None:
        self.repos[repo_id] = Repo(dict(files), commit, {"main": commit})
        for path, data in files.items():
            self._blobs[hashlib.sha256(data).hexdigest()] = (path, data)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._servers[0].server_port}"

    @property
    def cdn(self) -> str:
        return f"http://127.0.0.1:{self._servers[1].server_port}"

    def __enter__(self) -> FakeHub:
        for role in ("hub", "cdn"):
            server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self, role))
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, daemon=True).start()
            self._servers.append(server)
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        for server in self._servers:
            server.shutdown()
            server.server_close()

    def gets(self, repo_id: str, file: str) -> list[str | None]:
        """Range headers of the CDN GETs for one file of a repo (None: no Range)."""
        sha = hashlib.sha256(self.repos[repo_id].files[file]).hexdigest()
        return [rng for method, path, rng in self.log if method == "GET" and path == f"/cdn/{sha}"]


def _handler(hub: FakeHub, role: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # keep pytest output clean
            pass

        def do_HEAD(self) -> None:
            self._serve(body=False)

        def do_GET(self) -> None:
            self._serve(body=True)

        def _serve(self, body: bool) -> None:
            path = unquote(urlparse(self.path).path)
            hub.log.append((self.command, path, self.headers.get("Range")))
            if role == "cdn":
                return self._cdn(path, body)
            if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/revision/(.+)", path):
                return self._revision(m[1], m[2])
            if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)", path):
                return self._tree(m[1], m[2])
            if m := re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
                return self._resolve(m[1], m[2], m[3], body)
            self._reply(404, b"", {"X-Error-Code": "EntryNotFound"})

        def _repo(self, repo_id: str, rev: str) -> tuple[Repo, str] | None:
            repo = hub.repos.get(repo_id)
            if repo is None:
                self._json(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
                return None
            commit = repo.refs.get(rev, rev if rev == repo.commit else None)
            if commit is None:
                self._json(404, {"error": f"Invalid rev id: {rev}"}, {"X-Error-Code": "RevisionNotFound"})
                return None
            return repo, commit

        def _revision(self, repo_id: str, rev: str) -> None:
            if found := self._repo(repo_id, rev):
                repo, commit = found
                self._json(200, {"id": repo_id, "sha": commit, "private": False,
                                 "siblings": [{"rfilename": p} for p in sorted(repo.files)]})

        def _tree(self, repo_id: str, rev: str) -> None:
            if found := self._repo(repo_id, rev):
                entries = []
                for p, data in sorted(found[0].files.items()):
                    entry = {"type": "file", "oid": git_blob_id(data), "size": len(data), "path": p}
                    if p.endswith(LFS_SUFFIXES):
                        entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
                    entries.append(entry)
                self._json(200, entries)

        def _resolve(self, repo_id: str, rev: str, path: str, body: bool) -> None:
            if not (found := self._repo(repo_id, rev)):
                return
            repo, commit = found
            data = repo.files.get(path)
            if data is None:
                return self._reply(404, b"", {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit})
            headers = {"X-Repo-Commit": commit}
            if path.endswith(LFS_SUFFIXES):
                sha = hashlib.sha256(data).hexdigest()
                headers.update({
                    "ETag": f'"{git_blob_id(b"version https://git-lfs.github.com/spec/v1")}"',
                    "X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(len(data)),
                    "Location": f"{hub.cdn}/cdn/{sha}?filename={path.rsplit('/', 1)[-1]}",
                })
                return self._reply(302, b"", headers)
            headers["ETag"] = f'"{git_blob_id(data)}"'
            self._reply(200, data if body else b"", headers, length=len(data))

        def _cdn(self, path: str, body: bool) -> None:
            m = re.fullmatch(r"/cdn/([0-9a-f]{64})", path)
            if not m or m[1] not in hub._blobs:
                return self._reply(404, b"")
            name, data = hub._blobs[m[1]]
            start = 0
            if rng := re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", "")):
                start = int(rng[1])
            part = data[start:]
            headers = {"ETag": f'"{m[1]}"', "Accept-Ranges": "bytes"}
            if start:
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            stall = hub.stall_after.get(name)
            if not body or stall is None or start >= stall:
                return self._reply(206 if start else 200, part if body else b"", headers, length=len(part))
            self._reply(206 if start else 200, b"", headers, length=len(part), end=False)
            self.wfile.write(part[: stall - start])
            self.wfile.flush()
            hub.release.wait(60)  # hang mid-file until the test has interrupted the client
            self.close_connection = True

        def _json(self, status: int, payload, headers: dict | None = None) -> None:
            self._reply(status, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})})

        def _reply(self, status: int, data: bytes, headers: dict | None = None, length: int | None = None,
                   end: bool = True) -> None:
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data) if length is None else length))
            self.end_headers()
            if data:
                self.wfile.write(data)
            if end:
                self.wfile.flush()

    return Handler

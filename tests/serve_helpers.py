"""A real `invsr-serve` process on a free loopback port, for the service tests and the load benchmark."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`python -m invsr_serve.cli ENGINE_DIR --port P ...` until stopped (SIGTERM, then SIGKILL)."""

    def __init__(self, engine: Path, *flags: str, env: dict[str, str] | None = None, log: Path | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        cmd = [sys.executable, "-c", "from invsr_serve.cli import main; main()", str(engine),
               "--port", str(self.port), *flags]
        self.stderr = open(log, "wb") if log else subprocess.DEVNULL
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self.stderr,
                                     env={**os.environ, **(env or {})})

    def wait_ready(self, timeout: float = 120.0) -> "ServerProcess":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"invsr-serve exited with {self.proc.returncode}: {self.log_text()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"invsr-serve not ready after {timeout} s: {self.log_text()}")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log and self.log.exists() else ""

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.stderr is not subprocess.DEVNULL:
            self.stderr.close()
        return self.proc.returncode


def start_server(engine: Path, flags: Sequence[str] = (), env: dict[str, str] | None = None,
                 log: Path | None = None) -> ServerProcess:
    return ServerProcess(engine, *flags, env=env, log=log).wait_ready()

"""Start a server process on a free loopback port, wait until it answers, measure its CPU, stop it."""

from __future__ import annotations

import contextlib
import http.client
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from bench.data import REPO_ROOT

HOST = "127.0.0.1"
_TICKS = os.sysconf("SC_CLK_TCK")


class ServerStartError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def uvicorn_cmd(app: str, port: int, *, factory: bool = False) -> list[str]:
    """One uvicorn worker, quiet, on the fastest loop and parser installed (uvicorn[standard])."""
    cmd = [sys.executable, "-m", "uvicorn", app, "--host", HOST, "--port", str(port)]
    cmd += ["--no-access-log", "--log-level", "warning", "--app-dir", str(REPO_ROOT)]
    if factory:
        cmd.append("--factory")
    if importlib.util.find_spec("uvloop") is not None:
        cmd += ["--loop", "uvloop"]
    if importlib.util.find_spec("httptools") is not None:
        cmd += ["--http", "httptools"]
    return cmd


class ServerProcess:
    def __init__(self, name: str, proc: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
        self.name = name
        self.proc = proc
        self.port = port
        self.log_path = log_path

    def log_tail(self, lines: int = 12) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(f"    | {line[:200]}" for line in text.splitlines()[-lines:])

    def cpu_seconds(self) -> float:
        """CPU used so far by every process in the server's session (a server may fork workers)."""
        total = 0
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                continue
            fields = stat[stat.rindex(b")") + 2 :].split()
            if int(fields[3]) == self.proc.pid:  # session id: we started it with a new session
                total += int(fields[11]) + int(fields[12])
        return total / _TICKS

    def stop(self) -> None:
        if self.proc.poll() is None:
            # The group is the session created for this server alone; nothing else is in it.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


def _answers(port: int, path: str) -> bool:
    conn = http.client.HTTPConnection(HOST, port, timeout=2)
    try:
        conn.request("GET", path)
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


@contextlib.contextmanager
def serve(
    name: str,
    cmd: list[str],
    port: int,
    ready_path: str,
    env: Mapping[str, str] | None = None,
    timeout: float = 60.0,
) -> Iterator[ServerProcess]:
    """Run `cmd` until the block ends; it must answer `GET ready_path` with 200 within `timeout`."""
    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
        log_path = Path(tmp) / "server.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                cmd,
                cwd=REPO_ROOT,
                env={**os.environ, **(env or {})},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        server = ServerProcess(name, proc, port, log_path)
        try:
            deadline = time.monotonic() + timeout
            while not _answers(port, ready_path):
                if proc.poll() is not None:
                    raise ServerStartError(
                        f"{name} exited with code {proc.returncode} before answering GET {ready_path}:\n"
                        f"{server.log_tail()}"
                    )
                if time.monotonic() > deadline:
                    raise ServerStartError(
                        f"{name} did not answer GET {ready_path} within {timeout:.0f} s:\n{server.log_tail()}"
                    )
                time.sleep(0.05)
            yield server
        finally:
            server.stop()

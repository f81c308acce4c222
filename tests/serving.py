"""A real `veri-box serve` process for tests: started on a free port, stopped for sure."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

VERI_BOX = Path(sys.executable).parent / "veri-box"
VERI = Path(sys.executable).parent / "veri"  # veri-sdk's CLI
REPO = Path(__file__).resolve().parent.parent
KEY = re.compile(r"vk_[0-9a-f]{40}")
HEALTHY_WITHIN_S = 15
# Jobs of these tests run the stdlib test trainer, whose behaviour base_model sets.
FAKE_TRAINERS = "grpo=tests.fake_trainer,sft_video_gen=tests.fake_trainer"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([str(VERI_BOX), *args], capture_output=True, text=True, timeout=timeout, env=_env())


def veri(server: Server, config_dir: Path, *args: str) -> subprocess.CompletedProcess:
    """The official CLI pointed at the box the way its docs say: VERI_API_URL and VERI_API_KEY
    (the server's `key`), its config file in `config_dir`."""
    env = {
        **os.environ,
        "VERI_API_URL": server.url,
        "VERI_API_KEY": server.key,
        "VERI_CONFIG_PATH": str(config_dir / "veri.toml"),
        "NO_COLOR": "1",
        "COLUMNS": "200",
    }
    return subprocess.run([str(VERI), *args], capture_output=True, text=True, timeout=120, env=env)


def _env(home: Path | None = None) -> dict[str, str]:
    """This environment, minus anything that would point a process at a user's own box."""
    env = {k: v for k, v in os.environ.items() if k not in ("VERI_BOX_HOME", "VERI_API_KEY", "VERI_API_URL")}
    env["PYTHONUNBUFFERED"] = "1"
    # Trainers run as `python -m tests.fake_trainer`: the repo root must be importable.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    if home is not None:
        env["HOME"] = str(home)
    return env


class Server:
    """One `veri-box serve` process; its stdout and stderr go to a file we can show on failure."""

    def __init__(self, data_dir: Path, log_path: Path, *args: str):
        self.data_dir = data_dir
        self.log_path = log_path
        self.args = args or ("--gpus", "none")
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.key = ""  # the key the first start printed

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self) -> str:
        """Start and wait for /healthz; returns what the process printed while starting."""
        for _ in range(3):  # another process may take the free port between bind and listen
            mark = len(self.output())
            self.port = free_port()
            with self.log_path.open("a") as log:
                self.proc = subprocess.Popen(
                    [
                        str(VERI_BOX),
                        "serve",
                        "--port",
                        str(self.port),
                        "--data-dir",
                        str(self.data_dir),
                        *self.args,
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=_env(self.log_path.parent),
                )
            if self._wait_healthy():
                return self.output()[mark:]
            if "address already in use" not in self.output()[mark:].lower():
                break
        output = self.output()
        self.stop()
        pytest.fail(f"veri-box serve did not become healthy within {HEALTHY_WITHIN_S}s:\n{output}")

    def _wait_healthy(self) -> bool:
        deadline = time.monotonic() + HEALTHY_WITHIN_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return True
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        return False

    def stop(self, keep_deployments: bool = False) -> int | None:
        """SIGTERM, then SIGKILL if it does not exit; returns the exit code. Serving processes
        outlive the box by design (a restart re-attaches them), so unless a test restarts the box
        (`keep_deployments`), those of its data dir are killed: a test that failed before
        stopping its deployments must not leave them loaded for the rest of the run."""
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if not keep_deployments:
            mark = f"{self.data_dir / 'deployments'}/".encode()
            for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
                try:
                    if mark in cmdline.read_bytes():
                        os.kill(int(cmdline.parent.name), signal.SIGKILL)
                except (OSError, ValueError):
                    pass  # gone meanwhile
        return proc.returncode


def alive(pid: int) -> bool:
    """Running and not a zombie (a process whose parent has not reaped it yet is gone for a user)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, as host pids (a sandboxed trainer's own view of pids is its
    namespace's, so tests look from the host)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        children.setdefault(int(text[text.rindex(")") + 2 :].split()[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        below = children.get(todo.pop(), [])
        found += below
        todo += below
    return found

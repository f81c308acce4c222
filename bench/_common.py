"""Helpers shared by the benchmark scripts: start a real `veri-box serve`, make a key and a job,
summarise timings, read a process's memory. Nothing here imports veri_box, so the scripts can
measure the server as a separate process."""

from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
VERI_BOX = str(VENV_BIN / "veri-box") if (VENV_BIN / "veri-box").exists() else str(ROOT / ".venv" / "bin" / "veri-box")

REWARD_SOURCE = "def reward(completions, **kwargs):\n    return [0.0 for _ in completions]\n"


# The ten keys a GRPO step logs, more or less: the shape the metrics benches fill.
METRIC_KEYS = [
    "loss",
    "reward",
    "reward_std",
    "kl",
    "entropy",
    "learning_rate",
    "grad_norm",
    "completion_length",
    "clipped_ratio",
    "step_time",
]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A `veri-box serve` subprocess on a free port; its output goes to a log file in the data dir
    (uvicorn logs every request, and an unread pipe would eventually block the server)."""

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None, flags: tuple[str, ...] = ("--gpus", "none")):
        self.data_dir = Path(data_dir)
        self._env = env
        self.flags = flags
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.data_dir.parent / f"server-{self.port}.log"
        self._log = open(self.log_path, "wb")
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            [VERI_BOX, "serve", "--port", str(self.port), "--data-dir", str(self.data_dir), *flags],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )

    def wait_healthy(self, timeout: float = 30.0, interval: float = 0.01) -> float:
        """Poll GET /healthz every `interval` s; seconds from Popen to the first 200."""
        deadline = time.perf_counter() + timeout
        with httpx.Client(timeout=1.0) as client:
            while time.perf_counter() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited with {self.proc.returncode}; log:\n{self.log_tail()}")
                try:
                    if client.get(f"{self.url}/healthz").status_code == 200:
                        return time.perf_counter() - self.t0
                except httpx.TransportError:
                    pass
                time.sleep(interval)
        raise RuntimeError(f"server not healthy after {timeout}s; log:\n{self.log_tail()}")

    def restart(self) -> float:
        """Stop this server (e.g. one stuck in a runaway query) and start a fresh one on the same data dir."""
        self.stop()
        Server.__init__(self, self.data_dir, self._env, self.flags)
        return self.wait_healthy()

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so `with Server(...)` blocks still stop their servers."""

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def create_key(data_dir: Path) -> str:
    out = subprocess.run(
        [VERI_BOX, "keys", "create", "--name", "bench", "--data-dir", str(data_dir)],
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()


def _ok(resp: httpx.Response) -> dict:
    if resp.status_code != 200:
        raise RuntimeError(f"{resp.request.method} {resp.request.url} -> {resp.status_code}: {resp.text[:500]}")
    return resp.json()


def upload_dataset(client: httpx.Client, name: str = "bench", rows: int = 4) -> dict:
    body = "".join(json.dumps({"prompt": f"hi {i}"}) + "\n" for i in range(rows)).encode()
    return _ok(
        client.post("/v1/datasets", data={"name": name}, files={"file": ("data.jsonl", body, "application/jsonl")})
    )


def make_job(client: httpx.Client) -> dict:
    """Upload a tiny dataset and reward function, and submit a (CPU) job that uses them."""
    dataset = upload_dataset(client)
    rf = _ok(
        client.post(
            "/v1/reward_functions",
            data={"name": "zero"},
            files={"file": ("reward.py", REWARD_SOURCE.encode(), "text/x-python")},
        )
    )
    return _ok(
        client.post(
            "/v1/training_jobs",
            json={
                "base_model": "m",
                "dataset_id": dataset["id"],
                "reward_function_id": rf["id"],
                "output_name": "b",
                "gpu": {"type": "cpu", "count": 1},
            },
        )
    )


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), -(-len(ordered) * q // 100)))
    return ordered[int(rank) - 1]


def summary_ms(seconds: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in seconds]
    return {
        "n": len(ms),
        "median_ms": round(statistics.median(ms), 3),
        "p90_ms": round(percentile(ms, 90), 3),
        "max_ms": round(max(ms), 3),
    }


def proc_status_kb(pid: int, field: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def descendants(pid: int) -> list[int]:
    """All descendant pids (via /proc/PID/task/*/children)."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                kids = [int(x) for x in (task / "children").read_text().split()]
            except OSError:
                continue
            found.extend(kids)
            todo.extend(kids)
    return found


def print_table(headers: list[str], rows: list[list[object]]) -> None:
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if n == 0:
            print("  ".join("-" * w for w in widths))


def emit_json(result: dict, path: str | None) -> None:
    line = json.dumps(result, sort_keys=True)
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")
    print("JSON " + line)

"""`veri-box demo`: a first GRPO job on a running box, end to end, in about a minute on a CPU.

It uploads a prompt dataset and a reward function through the API like any client, submits a
LoRA GRPO job of the built-in tiny model (`veri-box/tiny-lm`, which the trainer builds on the
box the first time) on the `cpu` pool, and prints the reward as it climbs. `--video` does the
same for sft_video_gen: a zip of captioned clips of moving squares (made here, in a child
process), the built-in tiny CogVideoX pipeline, and a LoRA job whose loss and videos it prints.

Run on the box's own machine it needs no flags: `veri-box serve` records the URL it serves in
its data directory, and the demo keeps one API key named "demo" there (a file only its user can
read), made in the box's database the first time and used again on every later run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from . import paths
from .artifacts import load_snippet
from .statuses import TERMINAL, JobStatus

PROMPTS = [
    "Say something:",
    "Tell me a number.",
    "Write a short word.",
    "Hello! How are you?",
    "What is 2 + 3?",
    "Count to five:",
    "Name a color.",
    "Give me a letter.",
    "Answer yes or no.",
    "Write anything.",
    "What comes after b?",
    "Say hi.",
    "Pick a word:",
    "Write a number:",
    "Tell me something short.",
    "Continue:",
]
REWARD = '''def reward(completions, **kwargs):
    """The fraction of the completion's characters that are the letter 'a'."""
    return [c.count("a") / len(c) if c else 0.0 for c in completions]
'''
# Settings with which the tiny model learns within 30 steps (bench/tiny_grpo_learning.py).
HYPERPARAMETERS = {
    "learning_rate": 0.05,
    "max_steps": 30,
    "rollouts_per_prompt": 8,
    "global_batch_size": 32,
    "max_response_length": 16,
    "max_prompt_length": 64,
    "lora_rank": 8,
    "lora_alpha": 16,
    "lora_dropout": 0.0,
}
# The tiny CogVideoX pipeline's own size (trainers/tiny_video.py): 4 clips, 40 steps, ~30 s on a CPU.
VIDEO_HYPERPARAMETERS = {
    "num_frames": 9,
    "height": 32,
    "width": 32,
    "lora_rank": 16,
    "learning_rate": 2e-3,
    "num_epochs": 10,
    "validation_prompts": ["a red square moving right"],
    "validation_steps": 20,
    "save_steps": 20,
}
BARS = " ▁▂▃▄▅▆▇█"
TINY_LM = "veri-box/tiny-lm"  # built by the trainer on first use (trainers/models.py)
TINY_VIDEO = "veri-box/tiny-cogvideox"


DEFAULT_URL = "http://127.0.0.1:8000"
URL_FILE = "serve-url"  # in the data directory: the base URL `veri-box serve` serves it at
KEY_FILE = "demo-key"  # in the data directory, mode 0600: the demo's one API key
KEY_NAME = "demo"


class DemoError(Exception):
    pass


class KeyRefused(DemoError):
    """The box answered 401 to the demo's key."""


def record_url(data_dir: Path, url: str) -> None:
    """Called by `veri-box serve`: where the box of `data_dir` listens, for the demo to find."""
    _write_private(data_dir / URL_FILE, url)


def recorded_url(data_dir: Path) -> str | None:
    try:
        return (data_dir / URL_FILE).read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def _write_private(path: Path, text: str) -> None:
    """Replace `path` whole with `text`, readable by this user only."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text + "\n")
    os.replace(tmp, path)


def demo_key(data_dir: Path) -> str:
    """The demo's API key for the box of `data_dir`: the one kept in its KEY_FILE while the
    database still accepts it, else a new key named "demo" kept there for the next run. Never
    creates a database: a directory without one is a DemoError naming the flag to pass."""
    from .store import Store  # the demo is an HTTP client; only finding its key reads the database

    db = paths.db(data_dir)
    if not db.is_file():
        raise DemoError(
            f"there is no box in {data_dir} (no {db.name} there). Pass --data-dir DIR, the data directory "
            "`veri-box serve` printed after `data:`, or --api-key KEY with a key of the running box."
        )
    store = Store(db)
    try:
        key = (data_dir / KEY_FILE).read_text(encoding="utf-8").strip()
    except OSError:
        key = ""
    if key and store.authenticate(key) is not None:
        return key
    # A member: the demo only uploads and trains, and a key kept in a file should not be able to
    # change the box's settings or other users' keys.
    _, key = store.create_api_key(KEY_NAME, "member")
    _write_private(data_dir / KEY_FILE, key)
    return key


def squares_zip() -> bytes:
    """The video demo's dataset, made by trainers.tiny_video in a child process (it needs FFmpeg
    and numpy, which this client does not otherwise load)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "squares.zip"
        result = subprocess.run(
            [sys.executable, "-m", "trainers.tiny_video", "--dataset", str(path)], capture_output=True, text=True
        )
        if result.returncode:
            raise DemoError(f"Could not make the demo clips:\n{result.stderr[-2000:]}")
        return path.read_bytes()


def _check(response: httpx.Response) -> dict:
    if response.status_code >= 400:
        error = response.json().get("error", {}) if "json" in response.headers.get("content-type", "") else {}
        raise DemoError(
            f"{response.request.method} {response.request.url.path}: {response.status_code} "
            f"{error.get('code', '')} {error.get('message', response.text)}"
        )
    return response.json()


def sparkline(values: list[float]) -> str:
    if not values:
        return ""
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    return "".join(BARS[round((v - low) / span * (len(BARS) - 1))] for v in values)


def check_box(url: str) -> None:
    """Is a box there, before looking for a key or making anything (raises httpx.HTTPError)."""
    httpx.get(f"{url}/healthz", timeout=30).raise_for_status()


def run(url: str, key: str, timeout_s: float = 900, video: bool = False) -> int:
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as http:
        if http.get("/v1/datasets", params={"limit": 1}).status_code == 401:  # does it know the key
            raise KeyRefused(f"the box at {url} refused the API key (401 invalid_api_key)")
        job = (_submit_video if video else _submit_grpo)(http)
        print(f"Job {job['id']} submitted; watch it at {job['dashboard_url']}", flush=True)
        return _follow(http, job["id"], timeout_s, "loss" if video else "reward")


def _submit_video(http: httpx.Client) -> dict:
    files = {"file": ("squares.zip", squares_zip(), "application/zip")}
    dataset = _check(http.post("/v1/datasets", data={"name": "demo squares"}, files=files))
    body = {
        "method": "sft_video_gen",
        "base_model": TINY_VIDEO,
        "dataset_id": dataset["id"],
        "output_name": "tiny-video-demo",
        "hyperparameters": VIDEO_HYPERPARAMETERS,
        "gpu": {"type": "cpu", "count": 1},
    }
    return _check(http.post("/v1/training_jobs", json=body))


def _submit_grpo(http: httpx.Client) -> dict:
    rows = "".join(f'{{"prompt": "{p}"}}\n' for p in PROMPTS).encode()
    dataset = _check(
        http.post(
            "/v1/datasets", data={"name": "demo prompts"}, files={"file": ("demo.jsonl", rows, "application/jsonl")}
        )
    )
    reward = _check(
        http.post(
            "/v1/reward_functions",
            data={"name": "letter_a"},
            files={"file": ("letter_a.py", REWARD.encode(), "text/x-python")},
        )
    )
    return _check(
        http.post(
            "/v1/training_jobs",
            json={
                "base_model": TINY_LM,
                "dataset_id": dataset["id"],
                "reward_function_id": reward["id"],
                "output_name": "tiny-demo",
                "hyperparameters": HYPERPARAMETERS,
                "gpu": {"type": "cpu", "count": 1},
            },
        )
    )


def _follow(http: httpx.Client, job_id: str, timeout_s: float, key: str) -> int:
    deadline, shown, values, status = time.monotonic() + timeout_s, -1, [], JobStatus.QUEUED
    while time.monotonic() < deadline:
        job = _check(http.get(f"/v1/training_jobs/{job_id}"))
        if job["status"] != status:
            status = job["status"]
            print(f"status: {status}", flush=True)
        metrics = _check(http.get(f"/v1/training_jobs/{job_id}/metrics", params={"keys": key, "from_step": shown + 1}))
        for point in metrics["metrics"]:
            if key in point["values"]:
                values.append(point["values"][key])
                shown = point["step"]
                print(
                    f"step {shown:>3}/{job['total_steps'] or '?'}  {key} {values[-1]:.3f}  {sparkline(values)}",
                    flush=True,
                )
        if status in TERMINAL:
            break
        time.sleep(1)
    else:
        print(f"Still {status} after {timeout_s:.0f} s; the job goes on (GET /v1/training_jobs/{job_id}).")
        return 1
    if status != JobStatus.COMPLETED:
        error = job["error"] or {}
        print(f"The job ended {status}: {error.get('code')}: {error.get('message')}", file=sys.stderr)
        return 1
    if len(values) >= 10:
        first, last = sum(values[:5]) / 5, sum(values[-5:]) / 5
        print(f"Mean {key} went from {first:.3f} (first 5 steps) to {last:.3f} (last 5 steps).")
    for sample in _check(http.get(f"/v1/training_jobs/{job_id}/samples")).get("data", []):
        if "video_url" in sample:
            print(f"Validation video, step {sample['step']}, {sample['prompt']!r}: {sample['video_url']}")
    print(f"Done. Download the LoRA: GET /v1/training_jobs/{job_id}/model")
    # The job page and the model card show the same snippet (artifacts.load_snippet).
    print("Load it, with path/to/model the unpacked model.tar.gz (or its folder on the Hub):")
    print(load_snippet(job), end="", flush=True)
    return 0

"""The GPU check: one script that proves the box on a real GPU in under 9 minutes, phase by phase.

    python3 bench/gpu_check.py            # on the device machine (see bench/README.md, "GPU check")
    .venv/bin/python bench/gpu_check.py --cpu --budget 170   # the same code paths at tiny shapes, here

Phases, each with its own time budget; a phase that fails is recorded with its error and the
next one runs, and phases that no longer fit the total budget are skipped with that reason:

1. demo   `python -m veri_box serve --gpus auto` on a fresh data dir; the GPU's API type name and
          the sandbox from GET /v1/gpu/availability; the tiny GRPO and tiny video demo jobs
          (veri_box/demo.py's settings) through the API on that GPU: completed, with metrics,
          samples and a model archive.
2. grpo   a Qwen2.5-0.5B-shaped random model, 64 completions x 256 tokens, bf16: the box's
          trainer (`python -m trainers.grpo` on a job dir written with trainers.contract) against
          bench/gpu_bare_grpo.py (TRL alone), full / LoRA / 4-bit QLoRA: median step time after
          warm-up, peak memory, generated tokens/s, box/bare (target <= 1.03).
3. deploy POST /v1/deployments of the demo GRPO job's output (`source: "training_job"`, the user's
          path; the built-in tiny model if that job did not complete) on the GPU type the box reports,
          then of the grpo phase's model folder when time allows: the engine the API names, create ->
          serving, what the serving process says it runs on, TTFT and tokens/s of streamed chats
          through the box, requests/s of 8 concurrent clients, peak memory while serving, and after
          the stop the time until GET /v1/gpu/availability counts the device free (and, on a GPU,
          its memory back near idle).
4. video  bench/video_lora_step.py at CogVideoX-2b's shape, and 5b's when time allows.
5. oom    a GRPO job through the API whose batch cannot fit in the GPU memory left to it: it must
          fail with out_of_memory and the runner's hint, and leave the GPU's memory as it found it.

Writes $OUT (default ./gpu_check_out) /gpu_check.json (everything), /gpu_check.md (a short
table) and /memory_fit.jsonl (one row per measured run: model_params, method, completions,
tokens, peak_gib), after every phase, so a run cut short still leaves its report.

Peak memory: the box's trainer reports none, so it is measured from outside for both trainers
alike: nvidia-smi's memory.used, polled every 0.2 s, less the idle reading before the run (CUDA
context included: what the job takes of the card). The bare script also reports torch's
max_memory_allocated. On a CPU the same poller sums the process tree's RSS instead.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

import httpx  # noqa: E402 - after the sys.path lines
from _common import descendants, free_port, proc_status_kb  # noqa: E402

from veri_box import demo  # noqa: E402

PY = sys.executable  # the device has no `veri-box` script: everything runs as `python -m` of this one
RATIO_TARGET = 1.03
HINT_START = "Lower global_batch_size"  # veri_box/runner.py's OOM_HINT, which the job's message must carry
MODES = ("full", "lora", "qlora")


@dataclass(frozen=True)
class Profile:
    """What one run measures: the GPU run at real shapes, or the CPU run of the same paths at tiny ones."""

    cpu: bool
    budgets: dict[str, float]  # seconds per phase at most
    minimums: dict[str, float]  # seconds a phase needs to be worth starting; later phases keep theirs
    model_shape: str
    completions: int
    tokens: int
    steps: int  # optimizer steps, the first of which is warm-up
    grpo_run_s: float  # about what one GRPO run takes (start, load, steps): a mode is skipped without room for two
    video_shapes: tuple[str, ...]
    deploy_max_tokens: int  # per streamed chat request
    deploy_streams: int  # timed streamed requests after one warm-up
    deploy_concurrent_s: float  # how long the 8 clients keep asking
    deploy_run_s: float  # about what one deployment takes (serving, chats, stop): a second one needs this much
    demo_overrides: dict[str, Any] = field(default_factory=dict)
    video_overrides: dict[str, Any] = field(default_factory=dict)


GPU = Profile(
    cpu=False,
    budgets={"demo": 130, "grpo": 280, "deploy": 80, "video": 150, "oom": 60},
    minimums={"demo": 60, "grpo": 100, "deploy": 40, "video": 40, "oom": 45},
    model_shape="0.5b",
    completions=64,
    tokens=256,
    steps=4,
    grpo_run_s=40,
    video_shapes=("2b", "5b"),
    deploy_max_tokens=128,
    deploy_streams=5,
    deploy_concurrent_s=5,
    deploy_run_s=30,
)
# Shorter demo jobs than demo.py's (the same settings otherwise), so the test fits ~3 minutes on 2 cores.
CPU = Profile(
    cpu=True,
    budgets={"demo": 110, "grpo": 90, "deploy": 40, "video": 40, "oom": 5},
    minimums={"demo": 40, "grpo": 30, "deploy": 15, "video": 10, "oom": 1},
    model_shape="tiny",
    completions=16,
    tokens=16,
    steps=3,
    grpo_run_s=5,
    video_shapes=("tiny",),
    deploy_max_tokens=32,
    deploy_streams=3,
    deploy_concurrent_s=2,
    deploy_run_s=12,
    demo_overrides={"max_steps": 8},
    video_overrides={"num_epochs": 2, "validation_steps": 4, "save_steps": 4},
)


class Clock:
    """The total budget; each phase gets its own budget or what is left, whichever is less."""

    def __init__(self, total_s: float) -> None:
        self.start = time.monotonic()
        self.deadline = self.start + total_s

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start


class PhaseSkipped(Exception):
    """A phase (or part of one) that did not run, with why."""


class MemoryPoller:
    """Peak memory of a run, from outside it: nvidia-smi's memory.used on a GPU (minus the idle
    reading before the run), the process tree's RSS on a CPU. Both in GiB."""

    def __init__(self, cpu: bool, pid: int | None = None) -> None:
        self.cpu, self.pid = cpu, pid
        self.baseline = 0.0 if cpu else gpu_used_gib()
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self, pid: int | None = None) -> MemoryPoller:
        self.pid = pid or self.pid
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            value = tree_rss_gib(self.pid) if self.cpu else gpu_used_gib()
            self.peak = max(self.peak, value)
            self._stop.wait(0.2)

    def stop(self) -> float:
        """The run's peak over the baseline, GiB."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2)
        return round(self.peak - self.baseline, 3)


def gpu_used_gib(index: int = 0) -> float:
    out = subprocess.run(
        ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", str(index)],
        capture_output=True,
        text=True,
        timeout=20,
    )
    return float(out.stdout.strip().splitlines()[0]) / 1024 if out.returncode == 0 and out.stdout.strip() else 0.0


def gpu_processes() -> list[str]:
    out = subprocess.run(
        ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]


def tree_rss_gib(pid: int | None) -> float:
    if pid is None:
        return 0.0
    pids = [pid, *descendants(pid)]
    return sum(proc_status_kb(p, "VmRSS") or 0 for p in pids) / 2**20


def child_env(cpu: bool) -> dict[str, str]:
    """The box's code importable by every child, on top of whatever PYTHONPATH carried wheels use."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if cpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def run_json(cmd: list[str], timeout: float, env: dict[str, str], log: Path, poller: MemoryPoller | None = None):
    """Run a child that ends with a `JSON {...}` line; (that object, seconds, peak GiB or None)."""
    started = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)
        if poller:
            poller.start(proc.pid)
        try:
            code = proc.wait(max(timeout, 1))
        except subprocess.TimeoutExpired:
            kill_group(proc)
            raise RuntimeError(f"timed out after {timeout:.0f} s: {' '.join(cmd[:4])}; log tail:\n{tail(log)}")
        finally:
            peak = poller.stop() if poller else None
    if code:
        raise RuntimeError(f"exit {code}: {' '.join(cmd[:4])}; log tail:\n{tail(log)}")
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.startswith("JSON ")]
    if not lines:
        raise RuntimeError(f"no JSON line from {' '.join(cmd[:4])}; log tail:\n{tail(log)}")
    return json.loads(lines[-1][5:]), time.monotonic() - started, peak


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(10)


def tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# ---------------------------------------------------------------------------------------- the box


class Box:
    """One `python -m veri_box serve` for the whole check (the demo and oom phases share it)."""

    def __init__(self, work: Path, cpu: bool, sandbox: str = "auto") -> None:
        self.sandbox = sandbox
        self.data_dir = work / "data"
        self.log = work / "server.log"
        self.cpu = cpu
        self.proc: subprocess.Popen | None = None
        self.http: httpx.Client | None = None

    def client(self) -> httpx.Client:
        if self.http is None:
            self._start()
        return self.http

    def _start(self) -> None:
        env = child_env(self.cpu)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        key = subprocess.run(
            [PY, "-m", "veri_box", "keys", "create", "--name", "gpu-check", "--data-dir", str(self.data_dir)],
            capture_output=True,
            text=True,
            env=env,
            check=True,
            timeout=60,
        ).stdout.strip()
        port = free_port()
        gpus = ["--gpus", "none", "--cpu-slots", "1"] if self.cpu else ["--gpus", "auto", "--cpu-slots", "0"]
        cmd = [PY, "-m", "veri_box", "serve", "--port", str(port), "--data-dir", str(self.data_dir), *gpus]
        cmd += ["--sandbox", self.sandbox]
        self._log = open(self.log, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{tail(self.log)}")
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        else:
            raise RuntimeError(f"the server did not answer /healthz in 60 s:\n{tail(self.log)}")
        self.http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60)

    def call(self, method: str, path: str, **kwargs) -> dict:
        response = self.client().request(method, path, **kwargs)
        if response.status_code >= 400:
            raise RuntimeError(f"{method} {path}: {response.status_code} {response.text[:500]}")
        return response.json()

    def availability(self) -> dict:
        return self.call("GET", "/v1/gpu/availability")

    def device_type(self) -> str:
        rows = [r for r in self.availability()["availability"] if r["gpu_type"] != "cpu"]
        if self.cpu:
            return "cpu"
        if not rows:
            raise RuntimeError("no GPU detected by `--gpus auto` (GET /v1/gpu/availability lists none)")
        return rows[0]["gpu_type"]

    def wait(self, job_id: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            job = self.call("GET", f"/v1/training_jobs/{job_id}")
            if job["status"] in ("completed", "failed", "cancelled"):
                return job
            if time.monotonic() >= deadline:
                break
            time.sleep(1)
        self.call("POST", f"/v1/training_jobs/{job_id}/cancel")
        raise RuntimeError(f"job {job_id} still {job['status']} after {timeout:.0f} s (cancelled)")

    def stop(self) -> None:
        if self.http:
            self.http.close()
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc:
            self._log.close()


def upload_prompts(box: Box, rows: list[str], name: str) -> str:
    body = "".join(json.dumps({"prompt": p}) + "\n" for p in rows).encode()
    files = {"file": ("prompts.jsonl", body, "application/jsonl")}
    return box.call("POST", "/v1/datasets", data={"name": name}, files=files)["id"]


def upload_reward(box: Box, source: str, name: str) -> str:
    files = {"file": (f"{name}.py", source.encode(), "text/x-python")}
    return box.call("POST", "/v1/reward_functions", data={"name": name}, files=files)["id"]


# ------------------------------------------------------------------------------------ phase: demo


def phase_demo(ctx: Context, budget: float) -> dict:
    box = ctx.box
    device = box.device_type()
    availability = box.availability()
    result: dict[str, Any] = {"gpu_type": device, "sandbox": availability["box"]["sandbox"], "jobs": {}}
    result["availability"] = availability["availability"]
    result["expected_gpu_type"] = ctx.gpu_type
    deadline = time.monotonic() + budget
    grpo_hp = {**demo.HYPERPARAMETERS, **ctx.profile.demo_overrides}
    dataset = upload_prompts(box, demo.PROMPTS, "demo prompts")
    reward = upload_reward(box, demo.REWARD, "letter_a")
    grpo = box.call(
        "POST",
        "/v1/training_jobs",
        json={
            "base_model": demo.TINY_LM,
            "dataset_id": dataset,
            "reward_function_id": reward,
            "output_name": "gpu-check-grpo",
            "hyperparameters": grpo_hp,
            "gpu": {"type": device, "count": 1},
        },
    )
    # The video job queues behind the GRPO one on a one-GPU box: submitted now, it starts the moment the GPU frees.
    clips = {"file": ("squares.zip", demo.squares_zip(), "application/zip")}
    video_dataset = box.call("POST", "/v1/datasets", data={"name": "demo squares"}, files=clips)["id"]
    video = box.call(
        "POST",
        "/v1/training_jobs",
        json={
            "method": "sft_video_gen",
            "base_model": demo.TINY_VIDEO,
            "dataset_id": video_dataset,
            "output_name": "gpu-check-video",
            "hyperparameters": {**demo.VIDEO_HYPERPARAMETERS, **ctx.profile.video_overrides},
            "gpu": {"type": device, "count": 1},
        },
    )
    failures = [] if device == ctx.gpu_type else [f"the API names the GPU {device!r}, nvidia-smi {ctx.gpu_type!r}"]
    for name, job, key in (("grpo", grpo, "reward"), ("video", video, "loss")):
        summary = job_summary(box, box.wait(job["id"], deadline - time.monotonic()), key)
        result["jobs"][name] = summary
        if not summary["ok"]:
            failures.append(f"{name}: {summary['problem']}")
    if failures:
        raise RuntimeError("; ".join(failures))
    return result


def job_summary(box: Box, job: dict, key: str) -> dict:
    job_id = job["id"]
    metrics = box.call("GET", f"/v1/training_jobs/{job_id}/metrics", params={"keys": key})["metrics"]
    samples = box.call("GET", f"/v1/training_jobs/{job_id}/samples").get("data", [])
    manifest = box.call("GET", f"/v1/training_jobs/{job_id}/model") if job["status"] == "completed" else {}
    archive_bytes = None
    if manifest.get("download_url"):
        with box.client().stream("GET", manifest["download_url"]) as response:
            archive_bytes = sum(len(chunk) for chunk in response.iter_bytes()) if response.status_code == 200 else None
    values = [p["values"][key] for p in metrics if key in p["values"]]
    summary = {
        "id": job_id,
        "status": job["status"],
        "gpu": job.get("gpu"),
        "error": job.get("error"),
        "steps": len(values),
        f"first_{key}": values[0] if values else None,
        f"last_{key}": values[-1] if values else None,
        "samples": len(samples),
        "model_files": len(manifest.get("files", [])),
        "archive_bytes": archive_bytes,
    }
    problems = [
        what
        for what, bad in (
            (f"status {job['status']} ({(job.get('error') or {}).get('code')})", job["status"] != "completed"),
            ("no metrics", not values),
            ("no samples", not samples),
            ("no model archive", not archive_bytes),
        )
        if bad
    ]
    summary["ok"] = not problems
    summary["problem"] = ", ".join(problems) or None
    return summary


# ------------------------------------------------------------------------------------ phase: grpo


def model_dir(ctx: Context, timeout: float) -> tuple[Path, int]:
    """The Qwen2.5-0.5B-shaped model (tiny on a CPU), built once, shared by the grpo and oom phases."""
    if ctx.model is None:
        out = ctx.work / f"model-{ctx.profile.model_shape}"
        info, _, _ = run_json(
            [PY, str(BENCH / "gpu_bare_grpo.py"), "build", str(out), "--shape", ctx.profile.model_shape],
            timeout,
            ctx.env,
            ctx.work / "build-model.log",
        )
        ctx.model = (out, info["params"])
    return ctx.model


def fixed_prompts(count: int, words: int = 24) -> list[str]:
    """Prompts of the same length in tokens for any tokenizer that splits digits (the tiny one does)."""
    return [" ".join(str((i * 7 + j * 3) % 10) for j in range(words)) for i in range(count)]


def box_job_dir(ctx: Context, mode: str, model: Path, prompts: Path, reward: Path) -> Path:
    """A job directory as the runner prepares one, written with the contract's own writer."""
    from trainers.contract import DatasetConfig, Devices, JobConfig, RewardFunctionConfig, write_config
    from veri_box.hyperparameters import resolve

    p = ctx.profile
    job_dir = ctx.work / f"box-{mode}"
    shutil.rmtree(job_dir, ignore_errors=True)
    job_dir.mkdir(parents=True)
    hp = resolve("grpo", grpo_hyperparameters(p, mode))
    config = JobConfig(
        job_id=f"gpu-check-{mode}",
        method="grpo",
        trainer="trainers.grpo",
        base_model=str(model),
        output_name=f"gpu-check-{mode}",
        dataset=DatasetConfig(id="ds", format="prompt_only", columns=["prompt"], num_rows=64, path=str(prompts)),
        reward_functions=[
            RewardFunctionConfig(id="rf", name="reward", entrypoint="reward", path=str(reward), weight=1.0)
        ],
        environments=None,
        openreward=None,
        hyperparameters=hp,
        seed=hp["seed"],
        devices=Devices(type="cpu" if p.cpu else ctx.gpu_type, count=1, indices=[] if p.cpu else [0]),
        job_dir=str(job_dir),
        output_dir=str(job_dir / "output"),
        models_dir=str(ctx.work / "models"),
        checkpoints_dir=str(job_dir / "checkpoints"),
    )
    write_config(job_dir, config)
    return job_dir


def grpo_hyperparameters(p: Profile, mode: str) -> dict[str, Any]:
    hp: dict[str, Any] = {
        "learning_rate": 1e-6,
        "max_steps": p.steps,
        "rollouts_per_prompt": 8,
        "global_batch_size": p.completions,
        "max_response_length": p.tokens,
        "max_prompt_length": 128,
    }
    if mode != "full":
        hp.update(lora_rank=16, load_in_4bit=mode == "qlora")
    return hp


def step_stats(step_times: list[float], lengths: list[float], completions: int) -> dict[str, Any]:
    """Median over the steps after the first (warm-up: CUDA kernels, allocator, compile caches)."""
    timed = step_times[1:] or step_times
    median = statistics.median(timed)
    tokens = statistics.fmean(lengths[1:] or lengths) * completions if lengths else None
    return {
        "step_s_median": round(median, 4),
        "step_times": [round(t, 4) for t in step_times],
        "mean_completion_tokens": round(tokens / completions, 1) if tokens else None,
        "generated_tokens_per_s": round(tokens / median, 1) if tokens else None,
    }


def run_box(ctx: Context, mode: str, model: Path, prompts: Path, reward: Path, timeout: float) -> dict:
    job_dir = box_job_dir(ctx, mode, model, prompts, reward)
    env = dict(ctx.env, CUDA_VISIBLE_DEVICES="" if ctx.profile.cpu else "0")
    poller = MemoryPoller(ctx.profile.cpu)
    log = job_dir / "train.log"
    started = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [PY, "-m", "trainers.grpo", str(job_dir)], stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT
        )
        poller.start(proc.pid)
        try:
            code = proc.wait(max(timeout, 1))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
            raise RuntimeError(f"box {mode}: timed out after {timeout:.0f} s; log tail:\n{tail(log)}")
        finally:
            peak = poller.stop()
    records = [json.loads(line) for line in (job_dir / "progress.jsonl").read_text().splitlines() if line.strip()]
    if code or not any(r.get("type") == "event" and r.get("event") == "completed" for r in records):
        errors = [r for r in records if r.get("type") == "error"]
        raise RuntimeError(f"box {mode}: exit {code}, {errors[-1:] or 'no completed record'}; log:\n{tail(log)}")
    steps = [r for r in records if r.get("type") == "metrics"]
    stats = step_stats(
        [r["values"]["step_time"] for r in steps],
        [r["values"].get("completions/mean_length", 0.0) for r in steps],
        ctx.profile.completions,
    )
    return {**stats, "peak_gib": peak, "wall_s": round(time.monotonic() - started, 1)}


def run_bare(ctx: Context, mode: str, model: Path, prompts: Path, timeout: float) -> dict:
    from trainers.grpo import batch_split

    p = ctx.profile
    per_device, accumulation = batch_split(p.completions, 1)
    work = ctx.work / f"bare-{mode}"
    work.mkdir(parents=True, exist_ok=True)
    cmd = [PY, str(BENCH / "gpu_bare_grpo.py"), "train", "--model", str(model), "--prompts", str(prompts)]
    cmd += ["--work-dir", str(work), "--mode", mode, "--steps", str(p.steps), "--max-completion-length", str(p.tokens)]
    cmd += ["--per-device", str(per_device), "--accumulation", str(accumulation), "--lora-rank", "16"]
    env = dict(ctx.env, CUDA_VISIBLE_DEVICES="" if p.cpu else "0")
    out, wall, peak = run_json(cmd, timeout, env, work / "train.log", MemoryPoller(p.cpu))
    stats = step_stats(out["step_times"], out["mean_lengths"], p.completions)
    return {**stats, "peak_gib": peak, "torch_peak_gib": out["torch_peak_gib"], "wall_s": round(wall, 1)}


def run_timeout(deadline: float, keep: float) -> float:
    """What is left of the phase, less `keep` seconds for the run that must follow this one."""
    return max(deadline - time.monotonic() - keep, 1)


def phase_grpo(ctx: Context, budget: float) -> dict:
    p = ctx.profile
    deadline = time.monotonic() + budget
    model, params = model_dir(ctx, budget)
    prompts = ctx.work / "grpo-prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in fixed_prompts(64)))
    reward = ctx.work / "grpo-reward.py"
    reward.write_text("def reward(completions, **kwargs):\n    return [len(c) / 1000 for c in completions]\n")
    result: dict[str, Any] = {
        "model_shape": p.model_shape,
        "model_params": params,
        "completions": p.completions,
        "tokens": p.tokens,
        "steps": p.steps,
        "warmup_steps": 1,
        "dtype": "float32" if p.cpu else "bfloat16",
        "modes": {},
    }
    for mode in MODES:
        if mode == "qlora" and p.cpu:
            result["modes"][mode] = {"status": "skipped", "reason": "4-bit QLoRA (bitsandbytes) needs CUDA"}
            continue
        left = deadline - time.monotonic()
        if left < 2 * p.grpo_run_s:
            result["modes"][mode] = {"status": "skipped", "reason": f"time: {left:.0f} s left of the phase"}
            continue
        entry: dict[str, Any] = {"status": "ok"}
        try:
            # Greedy, in MODES order: full and LoRA before QLoRA, whatever time that leaves.
            entry["box"] = run_box(ctx, mode, model, prompts, reward, run_timeout(deadline, p.grpo_run_s))
            entry["bare"] = run_bare(ctx, mode, model, prompts, run_timeout(deadline, 0))
            entry["ratio_box_over_bare"] = round(entry["box"]["step_s_median"] / entry["bare"]["step_s_median"], 3)
            entry["meets_target"] = entry["ratio_box_over_bare"] <= RATIO_TARGET
            for who in ("box", "bare"):
                ctx.memory_rows.append(
                    {
                        "model_params": params,
                        "method": mode,
                        "completions": p.completions,
                        "tokens": p.tokens,
                        "peak_gib": entry[who]["peak_gib"],
                        "trainer": who,
                        "device": "cpu" if p.cpu else ctx.gpu_type,
                        "measured": "process tree RSS" if p.cpu else "nvidia-smi memory.used over idle",
                        "dtype": result["dtype"],
                    }
                )
        except Exception as err:  # noqa: BLE001 - one mode's failure is recorded; the next mode runs
            entry.update(status="failed", error=str(err)[-3000:])
        result["modes"][mode] = entry
        ctx.save(("grpo", result))
    if all(m.get("status") != "ok" for m in result["modes"].values()):
        raise RuntimeError("no GRPO mode ran: " + json.dumps(result["modes"])[-2000:])
    return result


# ---------------------------------------------------------------------------------- phase: deploy

CHAT = [{"role": "user", "content": "Count to five:"}]
CLIENTS = 8
STOP_WAIT_S = 25  # the server's default --cancel-grace-s (5 s) before SIGKILL, ticks, and the driver


def phase_deploy(ctx: Context, budget: float) -> dict:
    """Deployments through the box: the demo GRPO job's output first (the user's path: a trained
    job, `source: "training_job"`), then the grpo phase's model folder when time allows."""
    deadline = time.monotonic() + budget
    box = ctx.box
    device = box.device_type()
    targets: list[tuple[str, dict[str, str]]] = []
    job = ((ctx.report["phases"].get("demo") or {}).get("jobs") or {}).get("grpo") or {}
    if job.get("status") == "completed":
        targets.append(("demo_job", {"model": job["id"], "source": "training_job"}))
    else:  # the demo's job did not complete: the built-in model still proves the serving path
        targets.append(("tiny_lm", {"model": demo.TINY_LM, "source": "huggingface"}))
    if ctx.model:
        targets.append((f"model_{ctx.profile.model_shape}", {"model": str(ctx.model[0]), "source": "huggingface"}))
    result: dict[str, Any] = {"gpu_type": device, "clients": CLIENTS, "targets": {}}
    for i, (name, spec) in enumerate(targets):
        left = deadline - time.monotonic()
        if i and left < ctx.profile.deploy_run_s:
            result["targets"][name] = {"status": "skipped", "reason": f"time: {left:.0f} s left of the phase"}
            continue
        result["targets"][name] = deploy_once(ctx, name, device, spec, left)
        ctx.save(("deploy", result))
    first = result["targets"][targets[0][0]]
    if first["status"] != "ok":
        raise RuntimeError(f"{targets[0][0]}: {first.get('error')}")
    return result


def local_free(box: Box, device: str) -> int:
    rows = [r for r in box.availability()["availability"] if r["provider"] == "local" and r["gpu_type"] == device]
    return rows[0]["available"] if rows else 0


def deploy_once(ctx: Context, name: str, device: str, spec: dict[str, str], timeout: float) -> dict:
    """One deployment, created, measured, stopped; its error recorded rather than raised, so that it is
    always stopped and the device's release is always checked."""
    box, p = ctx.box, ctx.profile
    deadline = time.monotonic() + timeout
    free_before = local_free(box, device)
    idle = 0.0 if p.cpu else gpu_used_gib()
    # On a CPU the serving process is a child of the server: the server's tree less its RSS before.
    poller = MemoryPoller(p.cpu, box.proc.pid)
    if p.cpu:
        poller.baseline = poller.peak = tree_rss_gib(box.proc.pid)
    poller.start()
    out: dict[str, Any] = {"status": "ok", **spec, "free_before": free_before}
    body = {**spec, "name": f"gpu-check-{name}", "gpu": {"gpu_type": device, "gpu_count": 1}}
    started = time.monotonic()
    dep_id = None
    try:
        created = box.call("POST", "/v1/deployments", json=body)
        dep_id = out["id"] = created["id"]
        out["engine_at_create"] = created["engine"]
        row = wait_serving(box, dep_id, deadline - time.monotonic() - 15)
        out["create_to_serving_s"] = round(time.monotonic() - started, 2)
        out["engine"] = row["engine"]
        events = {e["type"]: e["metadata"] for e in row["events"]}
        out["device_index"] = (events.get("provisioning") or {}).get("device")
        out["load_s"] = (events.get("serving") or {}).get("load_s")
        out["serving_device"] = serving_device(box, dep_id)
        if not p.cpu:
            out["gpu_processes_serving"] = gpu_processes()
        out["free_while_serving"] = local_free(box, device)
        out.update(stream_chats(box, dep_id, p.deploy_max_tokens, p.deploy_streams))
        out.update(concurrent_chats(box, dep_id, p.deploy_concurrent_s))
        # The box logs each request once its answer is over, off the answer's path: read its
        # totals once two reads agree.
        metrics, previous = box.call("GET", f"/v1/deployments/{dep_id}/metrics"), None
        for _ in range(25):
            if previous is not None and metrics["requests_24h"] == previous["requests_24h"]:
                break
            time.sleep(0.2)
            previous, metrics = metrics, box.call("GET", f"/v1/deployments/{dep_id}/metrics")
        out["total_requests"] = metrics["total_requests"]
        out["box_metrics"] = {k: v for k, v in metrics.items() if k.endswith(("_p50", "_p90", "_p99", "_24h"))}
    except Exception as err:  # noqa: BLE001 - recorded; the deployment is still stopped below
        out.update(status="failed", error=f"{type(err).__name__}: {err}"[-3000:])
    finally:
        out["peak_gib"] = poller.stop()
        out["peak_measured"] = "server tree RSS over before" if p.cpu else "nvidia-smi memory.used over idle"
    if dep_id:
        try:
            out.update(stop_and_free(ctx, dep_id, device, free_before, idle))
        except Exception as err:  # noqa: BLE001
            out.update(status="failed", error=f"{out.get('error') or ''}; stop: {type(err).__name__}: {err}"[-3000:])
    if out["status"] == "ok" and not out.get("device_freed"):
        out.update(status="failed", error=f"the {device} device was not free again after the stop")
    if out["status"] == "ok" and not out.get("gpu_memory_released", True):
        used = out["used_after_stop_gib"]
        out.update(status="failed", error=f"GPU memory {used} GiB in use after the stop, {idle:.2f} idle before")
    return out


def wait_serving(box: Box, dep_id: str, timeout: float) -> dict:
    deadline = time.monotonic() + max(timeout, 5)
    while True:
        row = box.call("GET", f"/v1/deployments/{dep_id}")
        if row["status"] == "serving":
            return row
        if row["status"] in ("failed", "stopped"):
            raise RuntimeError(f"deployment {row['status']} ({row.get('failure_code')}): {row.get('error')}")
        if time.monotonic() >= deadline:
            raise RuntimeError(f"deployment still {row['status']} after {timeout:.0f} s")
        time.sleep(0.1)


def serving_device(box: Box, dep_id: str) -> str | None:
    """What the serving process itself says it runs on (`cuda` or `cpu`), asked on its socket."""
    sock = box.data_dir / "deployments" / dep_id / "serve.sock"
    try:
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://serve", timeout=5) as c:
            return c.get("/health").json().get("device")
    except (httpx.HTTPError, ValueError, OSError):
        return None


def stream_one(box: Box, dep_id: str, max_tokens: int) -> tuple[float, float, int]:
    """(seconds to the first content chunk, seconds in all, completion tokens) of one streamed chat."""
    body = {
        "messages": CHAT,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    t0 = time.perf_counter()
    first, tokens = None, 0
    with box.client().stream("POST", f"/v1/deployments/{dep_id}/chat/completions", json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"chat: {response.status_code} {response.read()[:300]!r}")
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(f"chat stream: {chunk['error']}")
            if first is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                first = time.perf_counter() - t0
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return first or 0.0, time.perf_counter() - t0, tokens


def stream_chats(box: Box, dep_id: str, max_tokens: int, count: int) -> dict:
    stream_one(box, dep_id, max_tokens)  # warm-up: first-call allocations, CUDA kernels, the connection
    runs = [stream_one(box, dep_id, max_tokens) for _ in range(count)]
    ttft = statistics.median(r[0] for r in runs)
    decode = [(r[2] - 1) / (r[1] - r[0]) for r in runs if r[2] > 1 and r[1] > r[0]]
    return {
        "stream_requests": count,
        "max_tokens": max_tokens,
        "completion_tokens": [r[2] for r in runs],
        "ttft_ms_median": round(ttft * 1000, 1),
        "stream_s_median": round(statistics.median(r[1] for r in runs), 3),
        "tokens_per_s_median": round(statistics.median(r[2] / r[1] for r in runs if r[1] > 0), 1),
        "decode_tokens_per_s_median": round(statistics.median(decode), 1) if decode else None,
    }


def concurrent_chats(box: Box, dep_id: str, seconds: float) -> dict:
    """CLIENTS threads asking non-streaming 16-token chats for `seconds`; requests/s over the
    time until the last answer."""
    body = {"messages": CHAT, "max_tokens": 16, "temperature": 0}
    done, errors = [0] * CLIENTS, []
    end = time.monotonic() + seconds

    def client(i: int) -> None:
        while time.monotonic() < end:
            response = box.client().post(f"/v1/deployments/{dep_id}/chat/completions", json=body)
            if response.status_code == 200:
                done[i] += 1
            else:
                errors.append(f"{response.status_code} {response.text[:200]}")

    t0 = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 120)
    elapsed = time.monotonic() - t0
    if errors and not sum(done):
        raise RuntimeError(f"{len(errors)} concurrent chats refused, none answered: {errors[0]}")
    return {
        "concurrent_requests": sum(done),
        "concurrent_s": round(elapsed, 2),
        "requests_per_s": round(sum(done) / elapsed, 2),
        "concurrent_errors": len(errors),
        "concurrent_first_error": errors[0] if errors else None,
    }


def stop_and_free(ctx: Context, dep_id: str, device: str, free_before: int, idle: float) -> dict:
    """POST stop, then until the device counts as free again (GET /v1/gpu/availability) and, on a
    GPU, its memory is back near the idle reading."""
    box = ctx.box
    t0 = time.monotonic()
    status = box.call("POST", f"/v1/deployments/{dep_id}/stop")["status"]
    out: dict[str, Any] = {"status_after_stop": status, "device_freed": False}
    deadline = t0 + STOP_WAIT_S
    while time.monotonic() < deadline:
        if local_free(box, device) >= free_before:
            out.update(device_freed=True, stop_to_free_s=round(time.monotonic() - t0, 2))
            break
        time.sleep(0.1)
    out["final_status"] = box.call("GET", f"/v1/deployments/{dep_id}")["status"]
    if not ctx.profile.cpu:
        used = gpu_used_gib()
        while used > idle + 0.5 and time.monotonic() < deadline:
            time.sleep(0.2)
            used = gpu_used_gib()
        out.update(used_after_stop_gib=round(used, 2), gpu_memory_released=used <= idle + 0.5)
        out["stop_to_memory_free_s"] = round(time.monotonic() - t0, 2)
        out["gpu_processes_after_stop"] = gpu_processes()
    return out


# ----------------------------------------------------------------------------------- phase: video


def phase_video(ctx: Context, budget: float) -> dict:
    deadline = time.monotonic() + budget
    result: dict[str, Any] = {"shapes": {}}
    for shape in ctx.profile.video_shapes:
        left = deadline - time.monotonic()
        if shape == "5b" and left < 60:
            result["shapes"][shape] = {"status": "skipped", "reason": f"time: {left:.0f} s left of the phase"}
            continue
        cmd = [PY, str(BENCH / "video_lora_step.py"), "--shape", shape, "--steps", "3", "--warmup", "1"]
        try:
            out, wall, _ = run_json(cmd, left, ctx.env, ctx.work / f"video-{shape}.log")
            result["shapes"][shape] = {"status": "ok", "wall_s": round(wall, 1), **out}
        except Exception as err:  # noqa: BLE001 - recorded; the next shape runs
            result["shapes"][shape] = {"status": "failed", "error": str(err)[-3000:]}
        ctx.save(("video", result))
    first = result["shapes"][ctx.profile.video_shapes[0]]
    if first["status"] != "ok":
        raise RuntimeError(f"{ctx.profile.video_shapes[0]}: {first.get('error')}")
    return result


# ------------------------------------------------------------------------------------- phase: oom

FILLER = """
import sys, torch
free, total = torch.cuda.mem_get_info()
keep = int(float(sys.argv[1]) * 2**30)
block = torch.empty(max(free - keep, 0), dtype=torch.uint8, device="cuda")
print("held", round(block.numel() / 2**30, 2), flush=True)
sys.stdin.read()
"""


def phase_oom(ctx: Context, budget: float) -> dict:
    """The card is made too small for the job by a second process holding all but `headroom` GiB
    (an H200 fits any batch of the 0.5B model, and a model too large for it takes too long to
    write): the trainer's allocations then fail for real, with CUDA's own error."""
    if ctx.profile.cpu:
        raise PhaseSkipped(
            "needs a GPU: a CPU has no GPU memory to run out of, and a faked CUDA error would test only the "
            "log matching (the runner's OOM_MARKERS), not a trainer running out"
        )
    deadline = time.monotonic() + budget
    model, _ = model_dir(ctx, budget / 2)
    box = ctx.box
    device = box.device_type()
    idle = gpu_used_gib()
    headroom = 1.5  # GiB: the 0.5B model's bf16 weights fit; its gradients, Adam states and reference model do not
    filler = subprocess.Popen(
        [PY, "-c", FILLER, str(headroom)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=ctx.env, text=True
    )
    result: dict[str, Any] = {"gpu_type": device, "idle_used_gib": round(idle, 2), "headroom_gib": headroom}
    try:
        result["filler"] = filler.stdout.readline().strip()
        held = gpu_used_gib()
        result["used_with_filler_gib"] = round(held, 2)
        dataset = upload_prompts(box, fixed_prompts(64), "oom prompts")
        reward = upload_reward(box, "def reward(completions, **kwargs):\n    return [0.0] * len(completions)\n", "zero")
        hp = {"max_steps": 2, "global_batch_size": 64, "max_response_length": 256, "max_prompt_length": 128}
        job = box.call(
            "POST",
            "/v1/training_jobs",
            json={
                "base_model": str(model),
                "dataset_id": dataset,
                "reward_function_id": reward,
                "output_name": "gpu-check-oom",
                "hyperparameters": hp,
                "gpu": {"type": device, "count": 1},
            },
        )
        job = box.wait(job["id"], deadline - time.monotonic() - 10)
        error = job.get("error") or {}
        result.update(job_id=job["id"], status=job["status"], error_code=error.get("code"))
        result["error_message"] = error.get("message")
        time.sleep(3)  # the driver hands back a dead process's memory within a moment
        result["used_after_job_gib"] = round(gpu_used_gib(), 2)
        result["gpu_processes_after_job"] = gpu_processes()
    finally:
        filler.stdin.close()
        try:
            filler.wait(20)
        except subprocess.TimeoutExpired:
            filler.kill()
    time.sleep(3)
    result["used_after_all_gib"] = round(gpu_used_gib(), 2)
    result["gpu_processes_after_all"] = gpu_processes()
    checks = {
        "failed_out_of_memory": result["status"] == "failed" and result["error_code"] == "out_of_memory",
        "hint_in_message": HINT_START in (result["error_message"] or ""),
        "trainer_memory_released": result["used_after_job_gib"] <= held + 0.5,
        "gpu_back_near_idle": result["used_after_all_gib"] <= idle + 0.5,
    }
    result["checks"] = checks
    if not all(checks.values()):
        raise RuntimeError("failed checks: " + ", ".join(k for k, v in checks.items() if not v) + f"; {result}")
    return result


# ---------------------------------------------------------------------------------------- driving

PHASES: list[tuple[str, Callable[[Context, float], dict]]] = [
    ("demo", phase_demo),
    ("grpo", phase_grpo),
    ("deploy", phase_deploy),
    ("video", phase_video),
    ("oom", phase_oom),
]


class Context:
    def __init__(self, profile: Profile, out: Path, work: Path, clock: Clock, sandbox: str = "auto") -> None:
        self.profile, self.out, self.work, self.clock = profile, out, work, clock
        self.env = child_env(profile.cpu)
        self.box = Box(work, profile.cpu, sandbox)
        self.model: tuple[Path, int] | None = None
        self.memory_rows: list[dict] = []
        self.gpu_type = "cpu" if profile.cpu else expected_gpu_type()
        self.report: dict[str, Any] = {
            "profile": "cpu" if profile.cpu else "gpu",
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "python": sys.version.split()[0],
            "phases": {},
        }

    def save(self, partial: tuple[str, dict] | None = None) -> None:
        """`partial`: a phase still running and what it has so far, kept if the run is cut short."""
        if partial:
            self.report["phases"][partial[0]] = {"status": "running", **partial[1]}
        self.report["elapsed_s"] = round(self.clock.elapsed(), 1)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "gpu_check.json").write_text(json.dumps(self.report, indent=2, default=str))
        (self.out / "memory_fit.jsonl").write_text("".join(json.dumps(r) + "\n" for r in self.memory_rows))
        (self.out / "gpu_check.md").write_text(table(self.report))


def expected_gpu_type() -> str:
    """The API type name of GPU 0 by the inventory's own rule, from nvidia-smi: what the box must report."""
    from veri_box.inventory import detect_nvidia, type_name

    gpus = detect_nvidia()
    if not gpus:
        return "none (nvidia-smi sees no GPU)"
    _, product, memory_mib = gpus[0]
    return type_name(product, memory_mib)


def versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    stack = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "diffusers", "bitsandbytes")
    for name in (*stack, "huggingface_hub", "tokenizers", "pyarrow", "av", "litestar", "msgspec"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def run_phase(ctx: Context, name: str, fn: Callable[[Context, float], dict], later: list[str]) -> None:
    """`later`: the phases still to run, each of which keeps its minimum out of this one's budget."""
    reserve = sum(ctx.profile.minimums[n] for n in later)
    budget = min(ctx.profile.budgets[name], ctx.clock.left() - reserve)
    started = time.monotonic()
    entry: dict[str, Any]
    if budget < ctx.profile.minimums[name]:
        entry = {"status": "skipped", "reason": f"time: {ctx.clock.left():.0f} s left of the total budget"}
    else:
        print(f"[{ctx.clock.elapsed():6.1f}s] phase {name} (budget {budget:.0f} s)", flush=True)
        try:
            entry = {"status": "ok", **fn(ctx, budget)}
        except PhaseSkipped as why:
            entry = {"status": "skipped", "reason": str(why)}
        except Exception as err:  # noqa: BLE001 - recorded; the next phase runs
            entry = {"status": "failed", "error": f"{type(err).__name__}: {err}"[-4000:]}
            entry["traceback"] = traceback.format_exc()[-2000:]
        entry["seconds"] = round(time.monotonic() - started, 1)
        entry["budget_s"] = round(budget)
    ctx.report["phases"][name] = entry
    if name == "demo" and entry.get("gpu_type"):
        ctx.gpu_type = entry["gpu_type"]
    ctx.save()
    print(f"[{ctx.clock.elapsed():6.1f}s] phase {name}: {entry['status']} {entry.get('reason') or ''}", flush=True)


def table(report: dict) -> str:
    """The short Markdown summary: one line per phase, one per GRPO mode, one per video shape."""
    phases = report["phases"]
    lines = [f"# GPU check ({report['profile']}, {report.get('elapsed_s', 0):.0f} s)", ""]
    lines += ["| phase | status | seconds | note |", "| --- | --- | --- | --- |"]
    for name, entry in phases.items():
        note = entry.get("reason") or ((entry.get("error") or "").splitlines() or [""])[0][:120]
        if name == "demo" and entry["status"] == "ok":
            note = f"{entry['gpu_type']}, sandbox {entry['sandbox']}"
        lines.append(f"| {name} | {entry['status']} | {entry.get('seconds', '')} | {note} |")
    grpo = phases.get("grpo", {}).get("modes", {})
    if grpo:
        lines += ["", "| GRPO | box step s | bare step s | box/bare | box peak GiB | bare peak GiB | box tok/s |"]
        lines.append("| --- | --- | --- | --- | --- | --- | --- |")
        for mode, e in grpo.items():
            if e.get("status") != "ok":
                lines.append(f"| {mode} | {e.get('status')}: {(e.get('reason') or e.get('error', ''))[:80]} |")
                continue
            b, r = e["box"], e["bare"]
            lines.append(
                f"| {mode} | {b['step_s_median']} | {r['step_s_median']} | {e['ratio_box_over_bare']} | "
                f"{b['peak_gib']} | {r['peak_gib']} | {b['generated_tokens_per_s']} |"
            )
    targets = phases.get("deploy", {}).get("targets", {})
    if targets:
        lines += [
            "",
            "| deploy | engine | device | create->serving s | TTFT ms | tok/s | req/s x8 | peak GiB | stop->free s |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for target, e in targets.items():
            if e.get("status") != "ok":
                lines.append(f"| {target} | {e.get('status')}: {(e.get('reason') or e.get('error', ''))[:80]} |")
                continue
            lines.append(
                f"| {target} | {e['engine']} | {e['serving_device']} | {e['create_to_serving_s']} | "
                f"{e['ttft_ms_median']} | {e['tokens_per_s_median']} | {e['requests_per_s']} | {e['peak_gib']} | "
                f"{e.get('stop_to_free_s')} |"
            )
    shapes = phases.get("video", {}).get("shapes", {})
    if shapes:
        lines += ["", "| video shape | status | step s | peak GiB |", "| --- | --- | --- | --- |"]
        for shape, e in shapes.items():
            lines.append(f"| {shape} | {e['status']} | {e.get('step_s_median', '')} | {e.get('peak_memory_gib', '')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", action="store_true", help="tiny shapes on this machine's CPU (the test)")
    parser.add_argument("--budget", type=float, default=None, help="total seconds (default 530 on a GPU, 300 --cpu)")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "gpu_check_out"))
    parser.add_argument("--sandbox", choices=["auto", "bwrap", "none"], default="auto", help="the server's --sandbox")
    parser.add_argument("--phases", default=",".join(name for name, _ in PHASES), help="comma-separated subset")
    args = parser.parse_args(argv)
    profile = CPU if args.cpu else GPU
    # demo.squares_zip runs `python -m trainers.tiny_video` with this process's environment.
    os.environ["PYTHONPATH"] = child_env(args.cpu)["PYTHONPATH"]
    clock = Clock(args.budget or (300 if args.cpu else 530))
    wanted = set(args.phases.split(","))

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        ctx = Context(profile, args.out, Path(tmp), clock, args.sandbox)
        ctx.report["versions"] = versions()
        try:
            names = [name for name, _ in PHASES if name in wanted]
            for name, fn in PHASES:
                if name in wanted:
                    run_phase(ctx, name, fn, names[names.index(name) + 1 :])
                else:
                    ctx.report["phases"][name] = {"status": "skipped", "reason": "not in --phases"}
        finally:
            ctx.box.stop()
            ctx.save()
    print(table(ctx.report))
    return 0 if all(e["status"] != "failed" for e in ctx.report["phases"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())

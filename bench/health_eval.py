"""Benchmark: what GRPO health evaluation adds per ingested step (target < 1 ms).

The step records are a real tiny GRPO run's (the keys and values of the demo job's first step, as
trainers/grpo.py logs them) with noise added per step, so every check does its work each step
(streaks, the KL window's median, the reward window). Times are CPU time of this thread (what
the evaluation costs) and wall time (what it took on a machine that others share). Three parts:

1. `JobHealth.observe` per step, over STEPS steps, in batches of 1 (the per-step cost);
2. `HealthMonitor.observe` over the runner's batches (BATCH steps a tick, as `_ingest` calls it);
3. for scale, the rest of ingestion of the same steps: `progress.parse` of their JSON lines and
   `Store.ingest_progress` into a real SQLite file (what a step costs without health).

    .venv/bin/python bench/health_eval.py            # writes bench/results/health_eval.txt
    .venv/bin/python bench/health_eval.py --steps 20000 --out -
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from veri_box import health, progress  # noqa: E402
from veri_box.store import Store  # noqa: E402

RESULT = Path(__file__).resolve().parent / "results" / "health_eval.txt"
TARGET_MS = 1.0
# One step of a real tiny GRPO job (the demo's settings, step 1), as the trainer logs it.
STEP = {
    "loss": -4.47e-08,
    "grad_norm": 0.68,
    "learning_rate": 0.05,
    "num_tokens": 1040.0,
    "completions/mean_length": 16.0,
    "completions/min_length": 16.0,
    "completions/max_length": 16.0,
    "completions/clipped_ratio": 0.97,
    "completions/mean_terminated_length": 16.0,
    "completions/min_terminated_length": 16.0,
    "completions/max_terminated_length": 16.0,
    "rewards/a_ratio/mean": 0.048,
    "rewards/a_ratio/std": 0.034,
    "reward": 0.048,
    "reward_std": 0.034,
    "frac_reward_zero_std": 0.0,
    "kl": 0.4,
    "entropy": 4.98,
    "clip_ratio/low_mean": 0.0,
    "clip_ratio/high_mean": 0.0,
    "clip_ratio/region_mean": 0.0,
    "clip_ratio/low_min": 0.0,
    "clip_ratio/high_max": 0.0,
    "step_time": 0.28,
    "throughput/tokens_per_s": 3650.0,
    "timing/generation_s": 0.2,
    "timing/reward_s": 0.01,
    "epoch": 0.25,
}


def steps(n: int, seed: int = 0) -> list[tuple[int, dict[str, float]]]:
    rng = random.Random(seed)
    out = []
    for step in range(1, n + 1):
        values = {k: v * (1 + 0.2 * rng.random()) for k, v in STEP.items()}
        values["frac_reward_zero_std"] = rng.choice([0.0, 0.25, 0.5, 1.0])  # streaks start and break
        values["kl"] = 0.4 + rng.random() * (30 if step % 997 == 0 else 1)  # an occasional spike
        out.append((step, values))
    return out


def per_step_us(points: list[tuple[int, dict[str, float]]]) -> tuple[list[float], list[float], int]:
    h = health.JobHealth(health.HealthSettings(), 16)
    cpu, wall, alerts = [], [], 0
    for step, values in points:
        c, w = time.thread_time_ns(), time.perf_counter_ns()
        alerts += len(h.observe(step, values))
        wall.append((time.perf_counter_ns() - w) / 1000)
        cpu.append((time.thread_time_ns() - c) / 1000)
    return cpu, wall, alerts


def monitor_us(points: list[tuple[int, dict[str, float]]], batch: int) -> tuple[float, float]:
    monitor = health.HealthMonitor()
    job = {"id": "job_bench", "method": "grpo", "hyperparameters": {"max_response_length": 16}}
    c, w = time.thread_time(), time.perf_counter()
    for i in range(0, len(points), batch):
        monitor.observe(job, points[i : i + batch], lambda: set())
    n = len(points)
    return (time.thread_time() - c) / n * 1e6, (time.perf_counter() - w) / n * 1e6


def ingest_us(points: list[tuple[int, dict[str, float]]], batch: int) -> tuple[float, float]:
    """progress.parse + Store.ingest_progress per step, in batches, on a real SQLite file."""
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "veri-box.db")
        job_id = "job_bench"
        lines = [(json.dumps({"type": "metrics", "step": s, "values": v}) + "\n").encode() for s, v in points]
        c, w = time.thread_time(), time.perf_counter()
        offset = 0
        for i in range(0, len(lines), batch):
            data = b"".join(lines[i : i + batch])
            parsed, used = progress.parse(data, job_id)
            offset += used
            store.ingest_progress(
                job_id,
                offset,
                points=parsed.points,
                samples=parsed.samples,
                checkpoints=parsed.checkpoints,
                events=parsed.events,
                fields=parsed.fields,
                running=parsed.running,
            )
        n = len(points)
        return (time.thread_time() - c) / n * 1e6, (time.perf_counter() - w) / n * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=50, help="steps per runner tick")
    parser.add_argument("--ingest-steps", type=int, default=10_000)
    parser.add_argument("--out", default=str(RESULT), help="result file, or - for stdout only")
    args = parser.parse_args()

    points = steps(args.steps)
    cpu, wall, alerts = per_step_us(points)
    cpu.sort()
    wall.sort()

    def pct(values: list[float], q: float) -> float:
        return values[min(int(len(values) * q), len(values) - 1)]

    batched_cpu, batched_wall = monitor_us(points, args.batch)
    ingest_cpu, ingest_wall = ingest_us(points[: args.ingest_steps], args.batch)
    verdict = "PASS" if pct(cpu, 0.99) / 1000 < TARGET_MS else "FAIL"
    report = "\n".join(
        [
            f"health evaluation per ingested GRPO step ({len(STEP)} keys, {args.steps} steps, {alerts} alerts raised)",
            f"  JobHealth.observe, one step, CPU:  median {statistics.median(cpu):.1f} us, "
            f"p99 {pct(cpu, 0.99):.1f} us, p99.9 {pct(cpu, 0.999):.1f} us, max {cpu[-1]:.0f} us",
            f"  JobHealth.observe, one step, wall: median {statistics.median(wall):.1f} us, "
            f"p99 {pct(wall, 0.99):.1f} us, max {wall[-1]:.0f} us (others' processes share this machine's cores)",
            f"  HealthMonitor.observe, {args.batch} steps a tick: {batched_cpu:.1f} us CPU "
            f"({batched_wall:.1f} us wall) per step",
            f"  for scale, parse + store one step (SQLite file, {args.batch} a tick, {args.ingest_steps} steps): "
            f"{ingest_cpu:.1f} us CPU ({ingest_wall:.1f} us wall) per step; health adds {batched_cpu / ingest_cpu:.0%} "
            "of that CPU",
            f"  target < {TARGET_MS:g} ms per step (CPU, p99): {verdict}",
            f"  python {sys.version.split()[0]}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        ]
    )
    print(report)
    if args.out != "-":
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(report + "\n")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: what the bubblewrap sandbox adds to a trainer's start.

The same job started through the real executor (veri_box.executors.LocalExecutor.start, then
polled as the runner polls it), once with --sandbox bwrap and once with --sandbox none,
alternating, `--runs` times each (default 5), on a temp data dir:

  (a) exit: a "trainer" that exits at once (`python -m trainers.contract JOB_DIR`, which only
      defines the config classes): Popen to process exit, i.e. interpreter start and bwrap's
      namespaces and mounts;
  (b) first record: the stdlib test trainer (tests/fake_trainer.py, steps=1): Popen to its
      first progress.jsonl record.

Prints the medians side by side and the difference. Target: bwrap - none < 0.3 s (median).

    .venv/bin/python bench/sandbox_overhead.py [--runs 5] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))

from trainers.contract import DatasetConfig, Devices, JobConfig, write_config  # noqa: E402
from veri_box import sandbox  # noqa: E402
from veri_box.executors import LocalExecutor  # noqa: E402
from veri_box.settings import Settings  # noqa: E402

TARGET_S = 0.3


def job_config(data_dir: Path, job_id: str, module: str) -> JobConfig:
    job_dir = data_dir / "jobs" / job_id
    job_dir.mkdir(parents=True)
    dataset = data_dir / "datasets" / "ds_1" / "data.jsonl"
    dataset.parent.mkdir(parents=True, exist_ok=True)
    dataset.write_text('{"prompt": "hi"}\n')
    config = JobConfig(
        job_id=job_id,
        method="grpo",
        trainer=module,
        base_model="fake:steps=1,step_s=0",
        output_name="bench",
        dataset=DatasetConfig(id="ds_1", format="prompt_only", columns=["prompt"], num_rows=1, path=str(dataset)),
        reward_functions=[],
        environments=None,
        openreward=None,
        hyperparameters={},
        seed=None,
        devices=Devices(type="cpu", count=1, indices=[0]),
        job_dir=str(job_dir),
        output_dir=str(job_dir / "output"),
        models_dir=str(data_dir / "models"),
        checkpoints_dir=str(job_dir / "checkpoints"),
    )
    write_config(job_dir, config)
    return config


def one_start(executor: LocalExecutor, data_dir: Path, n: int, module: str, until: str) -> float:
    """Seconds from start() to the process's exit ('exit') or its first progress record ('record')."""
    job_id = f"job_{n}"
    config = job_config(data_dir, job_id, module)
    job = {"id": job_id}
    progress = Path(config.job_dir) / "progress.jsonl"
    began = time.perf_counter()
    job.update(executor.start(job, config))
    while True:
        running, code = executor.poll(job)
        if until == "record" and progress.exists() and progress.stat().st_size:
            took = time.perf_counter() - began
            break
        if not running:
            took = time.perf_counter() - began
            if code != 0:
                log = (Path(config.job_dir) / "train.log").read_text(errors="replace")
                raise SystemExit(f"{module} exited with {code} under {executor.sandbox}:\n{log[-2000:]}")
            break
        time.sleep(0.002)
    while executor.poll(job)[0]:
        time.sleep(0.01)
    executor.release(job)
    return took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", help="append the JSON line to this file")
    args = parser.parse_args()
    problem = sandbox.works()
    if problem:
        print(f"bwrap does not work here: {problem}")
        return 1
    root = Path(tempfile.mkdtemp(prefix="veri-box-bench-sandbox-"))
    try:
        executors = {
            mode: LocalExecutor(Settings(data_dir=root / mode, gpus="none", sandbox=mode)) for mode in ("bwrap", "none")
        }
        cases = {"exit": "trainers.contract", "record": "tests.fake_trainer"}
        times: dict[str, dict[str, list[float]]] = {case: {"bwrap": [], "none": []} for case in cases}
        n = 0
        for _ in range(args.runs + 1):  # the first round warms the page cache, and is not counted
            for case, module in cases.items():
                for mode, executor in executors.items():
                    n += 1
                    took = one_start(executor, root / mode, n, module, case)
                    if n > 2 * len(cases):
                        times[case][mode].append(took)
        result: dict[str, float] = {}
        print(f"median of {args.runs} starts each (seconds)")
        print(f"{'case':<40}{'bwrap':>8}{'none':>8}{'added':>8}")
        names = {"exit": "Popen -> exit (trainer exits at once)", "record": "Popen -> first progress record"}
        ok = True
        for case in cases:
            bwrap, none = (statistics.median(times[case][m]) for m in ("bwrap", "none"))
            result |= {f"{case}_bwrap_s": round(bwrap, 4), f"{case}_none_s": round(none, 4)}
            result[f"{case}_added_s"] = round(bwrap - none, 4)
            ok &= bwrap - none < TARGET_S
            print(f"{names[case]:<40}{bwrap:>8.3f}{none:>8.3f}{bwrap - none:>8.3f}")
        print(f"target: added < {TARGET_S} s: {'met' if ok else 'MISSED'}")
        line = "JSON " + json.dumps({"bench": "sandbox_overhead", "runs": args.runs, **result, "target_met": ok})
        print(line)
        if args.json:
            with open(args.json, "a") as fh:
                fh.write(line[len("JSON ") :] + "\n")
        return 0 if ok else 1
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

"""A trainer that trains nothing, for the server's supervision tests.

    python -m tests.fake_trainer JOB_DIR

Its behaviour comes from config.base_model, e.g. "fake:steps=5,step_s=0.1,crash_at=3"
(a base_model without "fake:" runs with the defaults). Options, all combinable:

    steps=5          training steps, numbered 1..steps
    step_s=0.05      seconds each step sleeps
    startup_s=0      seconds of "model loading" before reporting running (a SIGTERM here stops it)
    save_every=0     checkpoint JOB_DIR/checkpoints/step-{i}/ every K steps and on SIGTERM (0: never)
    ignore_sigterm=0 1: keep going after SIGTERM, so only SIGKILL ends it
    crash_at=0       at step K raise RuntimeError("boom at step K"): traceback on stderr, exit 1
    error_at=0       at step K report error(error_code, ...) and exit 1
    error_code=trainer_error
    oom_at=0         at step K print a PyTorch CUDA OOM line on stderr and exit 1, no error record
    hang=0           1: after reporting running, sleep forever (a SIGTERM stops it unless ignored)
    hang_at=0        after step K, sleep forever without reporting anything more: a stalled trainer
    child=0          1: start a grandchild `sleep 600` in the same process group, pid in
                     JOB_DIR/grandchild.pid; it is never reaped here, killing the group is the runner's job

It writes JOB_DIR/env.json first thing ({CUDA_VISIBLE_DEVICES, pid, pgid, argv}) so tests can
check how it was launched. Stdlib only, like trainers.progress.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from trainers.contract import JobConfig
from trainers.progress import Progress, install_sigterm_handler, load_config, log, stop_requested

DEFAULTS: dict[str, int | float | str] = {
    "steps": 5,
    "step_s": 0.05,
    "startup_s": 0.0,
    "save_every": 0,
    "ignore_sigterm": 0,
    "crash_at": 0,
    "error_at": 0,
    "error_code": "trainer_error",
    "oom_at": 0,
    "hang": 0,
    "hang_at": 0,
    "child": 0,
}

OOM_LINE = (
    "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. "
    "GPU 0 has a total capacity of 79.15 GiB of which 1.02 GiB is free."
)
POLL_S = 0.02


def parse_options(base_model: str) -> dict:
    """`fake:steps=3,crash_at=2` -> the defaults with those two replaced; unknown keys are an error."""
    options = dict(DEFAULTS)
    if not base_model.startswith("fake:"):
        return options
    for item in base_model[len("fake:") :].split(","):
        if not item.strip():
            continue
        key, sep, raw = item.partition("=")
        key, raw = key.strip(), raw.strip()
        if key not in DEFAULTS or not sep:
            raise SystemExit(f"fake_trainer: bad option {item!r} in {base_model!r}; known: {', '.join(DEFAULTS)}")
        try:
            options[key] = type(DEFAULTS[key])(raw)
        except ValueError:
            raise SystemExit(f"fake_trainer: {key}={raw!r} is not a {type(DEFAULTS[key]).__name__}") from None
    return options


def write_json_atomically(path: Path, data: dict) -> None:
    # Tests poll for these files; never let them read half of one.
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data), encoding="utf-8")
    os.replace(tmp, path)


def sleep_until_stopped(seconds: float, ignore_sigterm: bool) -> bool:
    """Sleep up to `seconds` (inf: forever); True if a SIGTERM (not ignored) cut it short."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if stop_requested() and not ignore_sigterm:
            return True
        time.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))
    return stop_requested() and not ignore_sigterm


def save_checkpoint(progress: Progress, job_dir: Path, step: int) -> None:
    path = job_dir / "checkpoints" / f"step-{step}"
    path.mkdir(parents=True, exist_ok=True)
    (path / "weights.bin").write_bytes(b"fake" + step.to_bytes(4, "little"))
    progress.checkpoint(step, path)
    log(f"saved checkpoint {path.relative_to(job_dir)}")


def save_output(config: JobConfig, job_dir: Path) -> Path:
    output = job_dir / (config.output_dir or "output")  # an absolute output_dir wins the join
    output.mkdir(parents=True, exist_ok=True)
    (output / "config.json").write_text(json.dumps({"fake": True}), encoding="utf-8")
    (output / "model.bin").write_bytes(bytes(range(256)) * 4)
    return output


def main(argv: list[str]) -> int:
    install_sigterm_handler()
    if len(argv) != 2:
        raise SystemExit("usage: python -m tests.fake_trainer JOB_DIR")
    job_dir = Path(argv[1])
    config = load_config(job_dir)
    opts = parse_options(config.base_model)
    ignore_sigterm = bool(opts["ignore_sigterm"])
    steps, save_every = opts["steps"], opts["save_every"]

    write_json_atomically(
        job_dir / "env.json",
        {
            "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "pid": os.getpid(),
            "pgid": os.getpgid(0),
            "argv": sys.argv,
        },
    )
    if opts["child"]:
        grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        (job_dir / "grandchild.pid.tmp").write_text(str(grandchild.pid), encoding="utf-8")
        os.replace(job_dir / "grandchild.pid.tmp", job_dir / "grandchild.pid")

    progress = Progress(job_dir)
    log(f"fake trainer: {opts}")
    if opts["startup_s"] and sleep_until_stopped(opts["startup_s"], ignore_sigterm):
        log("stopping: SIGTERM received")
        return 0
    progress.started(total_steps=steps)

    if opts["hang"]:
        log("hanging")
        sleep_until_stopped(float("inf"), ignore_sigterm)

    last_saved = None
    told_ignoring = False
    for i in range(1, steps + 1):
        if stop_requested() and ignore_sigterm and not told_ignoring:
            log("ignoring SIGTERM (ignore_sigterm=1)")
            told_ignoring = True
        if stop_requested() and not ignore_sigterm:
            log("stopping: SIGTERM received")
            if save_every > 0 and last_saved != i - 1:
                save_checkpoint(progress, job_dir, i - 1)
            return 0
        if i == opts["crash_at"]:
            raise RuntimeError(f"boom at step {i}")
        if i == opts["error_at"]:
            code = opts["error_code"]
            progress.error(code, f"trainer reported {code} at step {i}")
            log(f"error {code} at step {i}")
            sys.exit(1)
        if i == opts["oom_at"]:
            print("Traceback (most recent call last):", file=sys.stderr)
            print('  File "trainers/grpo.py", line 1, in <module>', file=sys.stderr)
            print(OOM_LINE, file=sys.stderr, flush=True)
            sys.exit(1)

        time.sleep(opts["step_s"])
        loss = 1 / (i + 1)
        log(f"step {i} loss {loss:.4f}")
        progress.metrics(i, {"loss": loss, "reward": i / steps, "learning_rate": 1e-5})
        progress.sample(i, prompt=f"p{i}", completion=f"c{i}", reward=i / steps)
        if save_every > 0 and i % save_every == 0:
            save_checkpoint(progress, job_dir, i)
            last_saved = i
        if i == opts["hang_at"]:
            log(f"hanging after step {i}")
            sleep_until_stopped(float("inf"), ignore_sigterm)

    output = save_output(config, job_dir)
    log(f"saved model to {output}")
    progress.completed()
    progress.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

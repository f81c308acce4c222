"""A trainer that trains nothing but opens the job's trackers as a real trainer does, for the
tests of how the W&B key reaches the machine that trains (tests/test_remote_jobs.py).

    python -m tests.tracking_trainer JOB_DIR

Two steps through trainers.trackers.Tracked (so W&B is started with whatever key the trainer
was given), then the fake trainer's output. No torch, no model: seconds on a loaded machine.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tests.fake_trainer import save_output
from trainers.progress import Progress, install_sigterm_handler, load_config, log
from trainers.trackers import Tracked


def main(argv: list[str]) -> int:
    install_sigterm_handler()
    job_dir = Path(argv[1])
    config = load_config(job_dir)
    progress = Tracked(config, Progress(job_dir))
    progress.started(total_steps=2)
    for step in (1, 2):
        progress.metrics(step, {"loss": 1 / (step + 1), "reward": step / 2})
    log(f"saved model to {save_output(config, job_dir)}")
    progress.completed()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

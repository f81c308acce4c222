"""A trainer that trains nothing and calls its job's reward functions once, for the sandbox tests.

    python -m tests.hostile_trainer JOB_DIR

It loads and calls the uploaded functions exactly as trainers.grpo does (trainers.rewards, with
the job's reward_timeout_s), on one prompt and completion per dataset row, so a test can run
hostile reward code inside the real sandbox in a second rather than a GRPO job's half minute.
What the functions print is the job's log. Stdlib only, like trainers.progress.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from trainers import rewards
from trainers.contract import JobConfig
from trainers.progress import Progress, log, run


def train(config: JobConfig, progress: Progress) -> int:
    functions, _ = rewards.load(config.reward_functions, timeout_s=config.hyperparameters.get("reward_timeout_s"))
    progress.started(total_steps=1)
    scores = {}
    for function in functions:
        scores[function.__name__] = function(prompts=["What is 2+2?"], completions=["4"])
        log(f"{function.__name__} scored {scores[function.__name__]}")
    progress.metrics(1, {"reward": sum(v[0] or 0.0 for v in scores.values())})
    output = Path(config.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    (output / "scores.json").write_text(json.dumps(scores), encoding="utf-8")
    progress.completed()
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1], train))

"""What the GRPO trainer relies on in TRL beyond its documented API, in one place.

GRPOTrainer keeps the rollouts of the latest generation batch for its own logging (`_logs`),
its reward weights and group size as attributes, and extends transformers' `Trainer.log`; the
GRPO trainer reports those rollouts as samples from its own `log` override. None of this is a
public TRL interface, so pyproject.toml pins trl to the minor it was read from and
tests/test_trl_compat.py checks every name here against the installed TRL: an upgrade that
moves one fails that test, not a user's job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# GRPOTrainer._logs: one deque per field (rewards and extra: one per reward function or
# column), each bounded to the generation batch, so they hold the latest rollouts only.
ROLLOUT_LOGS = ("prompt", "completion", "rewards", "advantages", "extra")
# GRPOTrainer.log(logs, start_time=None), as transformers' Trainer.log; our override calls it first.
LOG_PARAMETERS = ("self", "logs", "start_time")


@dataclass(frozen=True)
class Rollouts:
    """The rollouts behind the latest logged step, in order: `rewards` per reward function name,
    `extra` per column that reward functions added with TRL's `log_extra`."""

    prompts: list
    completions: list
    rewards: dict[str, list]
    advantages: list
    extra: dict[str, list]


def rollouts(trainer: Any) -> Rollouts:
    logs = trainer._logs
    return Rollouts(
        prompts=list(logs["prompt"]),
        completions=list(logs["completion"]),
        rewards={name: list(values) for name, values in logs["rewards"].items()},
        advantages=list(logs["advantages"]),
        extra={column: list(values) for column, values in logs["extra"].items()},
    )


def reward_weights(trainer: Any) -> list[float]:
    """One weight per reward function, in the order of `rollouts(trainer).rewards`."""
    return trainer.reward_weights.tolist()


def group_size(trainer: Any) -> int:
    """Completions per prompt: consecutive rollouts of one prompt form a group."""
    return trainer.num_generations


def is_main_process(trainer: Any) -> bool:
    return trainer.accelerator.is_main_process


def replayable(sampler: Any) -> Any:
    """GRPOTrainer's RepeatSampler (from `_get_train_sampler`) draws each epoch's order from one
    generator seeded once, and has no `set_epoch`: a run resumed in its third epoch would take the
    first epoch's order. With this `set_epoch`, which transformers' Trainer calls before every
    epoch, the order of epoch e is the e+1-th draw from the seed, as in an uninterrupted run."""
    import torch

    def set_epoch(epoch: int) -> None:
        if not sampler.shuffle or sampler.seed is None:
            return
        sampler.generator.manual_seed(sampler.seed)
        for _ in range(epoch):
            torch.randperm(sampler.num_samples, generator=sampler.generator)

    sampler.set_epoch = set_epoch
    return sampler


def checkpointing_key() -> str:
    """The TrainingArguments field that turns activation checkpointing on: transformers 5.2x
    renamed `gradient_checkpointing` (now deprecated) to `activation_checkpointing`, and the
    releases pyproject still allows (4.56 on, 5.17 on the GPU machine's image) know only the old
    name, so passing the new one there is a TypeError before training starts."""
    import dataclasses

    import transformers

    names = {f.name for f in dataclasses.fields(transformers.TrainingArguments)}
    return "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"

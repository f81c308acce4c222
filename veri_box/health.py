"""GRPO health: the box watches each GRPO job's metrics as the runner ingests them and raises a
health alert (a `health_alert` job event, a banner on the job page) when the run has stopped
learning or is about to go wrong, with what it means and what to try.

An alert is raised once per episode: when its condition starts to hold (for the steps it must
hold), not again while it goes on holding, and again only after it cleared. Thresholds are
defaults a job may override in `hyperparameters.health`; `"on_alert": "stop"` makes the runner
fail the job (`health_check_failed`) at its first alert rather than burn more GPU hours.

Plain Python over the numbers the trainer already logs (TRL's names): a few comparisons and a
short window per step, so evaluation costs microseconds per ingested step (bench/health_eval.py).
"""

from __future__ import annotations

import math
from collections import deque
from statistics import median
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from .errors import UNKNOWN_FIELD, bad_request, split_validation_error

EVENT = "health_alert"
FAILURE_CODE = "health_check_failed"

# The kinds of alert, each with its meaning and what to try (the event's message and advice).
ZERO_VARIANCE = "zero_reward_variance"
LENGTH_COLLAPSE = "completion_length_collapse"
TRUNCATION = "completion_truncation"
KL_HIGH = "kl_high"
KL_SPIKE = "kl_spike"
REWARD_FLAT = "reward_flat"
NONFINITE = "nonfinite"
SLOW_REWARD = "slow_reward"
Kind = Literal[
    "zero_reward_variance",
    "completion_length_collapse",
    "completion_truncation",
    "kl_high",
    "kl_spike",
    "reward_flat",
    "nonfinite",
    "slow_reward",
]

# The trainer's metric names (TRL's GRPOTrainer; trainers/grpo.py adds the others).
ZERO_STD_KEY = "frac_reward_zero_std"
LENGTH_KEY = "completions/mean_length"
CLIPPED_KEY = "completions/clipped_ratio"
KL_KEY = "kl"
REWARD_KEY = "reward"
NONFINITE_PREFIX = "nonfinite/"  # trainers/grpo.py: 1.0 under nonfinite/<key> when <key> was NaN or inf
REWARD_TIME_KEY = "timing/reward_s"
GENERATION_TIME_KEY = "timing/generation_s"

Fraction = Annotated[float, Meta(ge=0, le=1)]
StepCount = Annotated[int, Meta(ge=1, le=100_000)]


class HealthSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """`hyperparameters.health` of a GRPO job; every field optional (docs/api.md, "GRPO health")."""

    on_alert: Literal["warn", "stop"] = "warn"
    ignore: list[Kind] = []
    zero_std_frac: Fraction = 0.9
    zero_std_steps: StepCount = 10
    min_length: Annotated[float, Meta(ge=0, le=1_048_576)] = 2.0
    truncation_frac: Fraction = 0.9
    length_steps: StepCount = 5
    kl_max: Annotated[float, Meta(gt=0, le=1e9)] = 10.0
    kl_steps: StepCount = 3
    kl_spike_factor: Annotated[float, Meta(gt=1, le=1e9)] = 10.0
    kl_spike_min: Annotated[float, Meta(ge=0, le=1e9)] = 1.0
    reward_flat_steps: StepCount = 20
    reward_flat_tol: Annotated[float, Meta(ge=0, le=1e9)] = 1e-4
    slow_reward_steps: StepCount = 3


FIELDS = tuple(f.name for f in msgspec.structs.fields(HealthSettings))
KL_WINDOW = 10  # previous steps whose median a spike is measured against


def resolve(given: Any) -> dict[str, Any]:
    """`hyperparameters.health` validated, with every default filled in (400 on a bad one)."""
    try:
        settings = msgspec.convert(given, type=HealthSettings)
    except msgspec.ValidationError as err:
        message, path = split_validation_error(err)
        param = "hyperparameters.health" + (f".{path}" if path else "")
        if message.startswith(UNKNOWN_FIELD):
            name = param.removeprefix("hyperparameters.health.")
            raise bad_request(
                "unknown_field",
                f"Unknown health setting '{name}'; known: {', '.join(FIELDS)}.",
                param,
            ) from None
        raise bad_request("invalid_hyperparameter", f"Invalid {param}: {message[0].lower()}{message[1:]}.", param)
    return msgspec.to_builtins(settings)


def settings_of(job: dict) -> HealthSettings:
    given = (job.get("hyperparameters") or {}).get("health") or {}
    try:
        return msgspec.convert(given, type=HealthSettings)
    except msgspec.ValidationError:  # a job stored before a setting changed: watch it with the defaults
        return HealthSettings()


def _alert(kind: str, step: int, message: str, advice: str) -> dict:
    return {"alert": kind, "message": message, "advice": advice, "step": step}


class JobHealth:
    """The health of one job: fed each logged step's metrics in order, returns the alerts that
    step raises. Each check keeps a streak (consecutive steps its condition held) and whether
    its episode is open (alerted and not yet cleared)."""

    def __init__(
        self, settings: HealthSettings, max_response_length: int | None = None, raised: set[str] = frozenset()
    ):
        self.s = settings
        self.max_length = max_response_length
        self.ignore = set(settings.ignore)
        self.open: set[str] = set(raised)  # episodes alerted before a server restart stay open
        self.streaks: dict[str, int] = {}
        self.kl_recent: deque[float] = deque(maxlen=KL_WINDOW)
        self.rewards: deque[float] = deque(maxlen=settings.reward_flat_steps)
        self.clipped_start: list[float] = []  # the first length_steps steps' clipped ratios

    def observe(self, step: int, values: dict[str, float]) -> list[dict]:
        out: list[dict] = []
        s = self.s
        # Not-finite first: the other checks read numbers a broken step no longer has.
        bad = sorted(k.removeprefix(NONFINITE_PREFIX) for k in values if k.startswith(NONFINITE_PREFIX))
        bad += sorted(k for k, v in values.items() if isinstance(v, float) and not math.isfinite(v))
        self._episode(out, NONFINITE, bool(bad), 1, step, lambda: _nonfinite(bad))

        zero_std = values.get(ZERO_STD_KEY)
        if zero_std is not None:
            self._episode(
                out, ZERO_VARIANCE, zero_std >= s.zero_std_frac, s.zero_std_steps, step, lambda: _zero_variance(s)
            )
        length = values.get(LENGTH_KEY)
        if length is not None:
            self._episode(
                out, LENGTH_COLLAPSE, length <= s.min_length, s.length_steps, step, lambda: _collapse(s, length)
            )
        clipped = values.get(CLIPPED_KEY)
        if clipped is not None:
            if len(self.clipped_start) < s.length_steps:
                self.clipped_start.append(clipped)
            # Truncated from the first steps is the job's max_response_length, chosen by its
            # user; the alert is for completions that grew into the cap while training.
            grew = sum(self.clipped_start) / len(self.clipped_start) < 0.5
            self._episode(
                out,
                TRUNCATION,
                grew and clipped >= s.truncation_frac,
                s.length_steps,
                step,
                lambda: _truncation(s, clipped, self.max_length),
            )
        kl = values.get(KL_KEY)
        if kl is not None:
            self._episode(out, KL_HIGH, kl > s.kl_max, s.kl_steps, step, lambda: _kl_high(s, kl))
            before = median(self.kl_recent) if len(self.kl_recent) >= 3 else None
            spike = before is not None and kl > s.kl_spike_min and kl > s.kl_spike_factor * max(before, 1e-12)
            self._episode(out, KL_SPIKE, spike, 1, step, lambda: _kl_spike(s, kl, before))
            self.kl_recent.append(kl)
        reward = values.get(REWARD_KEY)
        if reward is not None:
            self.rewards.append(reward)
            full = len(self.rewards) == s.reward_flat_steps
            flat = full and max(self.rewards) - min(self.rewards) <= s.reward_flat_tol
            self._episode(out, REWARD_FLAT, flat, 1, step, lambda: _reward_flat(s, reward))
        reward_s, generation_s = values.get(REWARD_TIME_KEY), values.get(GENERATION_TIME_KEY)
        if reward_s is not None and generation_s is not None:
            self._episode(
                out,
                SLOW_REWARD,
                reward_s > generation_s,
                s.slow_reward_steps,
                step,
                lambda: _slow_reward(reward_s, generation_s),
            )
        return out

    def _episode(self, out: list[dict], kind: str, holds: bool, needed: int, step: int, describe) -> None:
        if not holds:
            self.streaks[kind] = 0
            self.open.discard(kind)
            return
        streak = self.streaks.get(kind, 0) + 1
        self.streaks[kind] = streak
        if streak >= needed and kind not in self.open:
            self.open.add(kind)
            if kind not in self.ignore:
                out.append(_alert(kind, step, *describe()))


# -- what each alert says ----------------------------------------------------------------------


def _nonfinite(keys: list[str]) -> tuple[str, str]:
    return (
        f"{', '.join(keys)} became NaN or infinite: the weights are likely broken and later steps learn nothing.",
        "Lower learning_rate (by 10x), check the reward functions for NaN or huge values, and resume from the "
        "last checkpoint saved before it happened.",
    )


def _zero_variance(s: HealthSettings) -> tuple[str, str]:
    return (
        f"At least {s.zero_std_frac:.0%} of the prompt groups got the same reward for every completion, "
        f"{s.zero_std_steps} steps running: GRPO learns from differences within a group, so there is nothing "
        "to learn from.",
        "Make the reward graded rather than all-or-nothing (partial credit), raise rollouts_per_prompt or "
        "temperature for more diverse completions, or use prompts neither always solved nor never solved. "
        "If the reward is at its maximum, the job has learned what it can: stop it.",
    )


def _collapse(s: HealthSettings, length: float) -> tuple[str, str]:
    return (
        f"Completions collapsed to {length:.3g} tokens on average (at most {s.min_length:g}) for "
        f"{s.length_steps} steps: the model is learning to say nothing.",
        "The reward likely pays for short or empty answers (a length penalty, or a score of 0 that an empty "
        "answer also gets): require a non-empty answer in the reward, or lower the weight of length terms.",
    )


def _truncation(s: HealthSettings, clipped: float, max_length: int | None) -> tuple[str, str]:
    cap = f"max_response_length ({max_length} tokens)" if max_length else "max_response_length"
    return (
        f"{clipped:.0%} of the completions now stop at {cap} for {s.length_steps} steps (at first most "
        "finished): they are cut off, and the reward scores unfinished answers.",
        "Raise max_response_length, or reward concise answers (a length penalty, a format reward for a closed answer).",
    )


def _kl_high(s: HealthSettings, kl: float) -> tuple[str, str]:
    return (
        f"KL from the reference model is {kl:.3g}, above {s.kl_max:g} for {s.kl_steps} steps: the policy has "
        "drifted far from the model it started from (reward hacking or degenerate text often follow).",
        "Raise kl_coef, lower learning_rate, and read the latest rollouts for text that games the reward.",
    )


def _kl_spike(s: HealthSettings, kl: float, before: float | None) -> tuple[str, str]:
    return (
        f"KL jumped to {kl:.3g}, over {s.kl_spike_factor:g}x its recent median ({before:.3g}): one update "
        "moved the policy abruptly, a sign of instability.",
        "Lower learning_rate, check grad_norm around this step, and raise kl_coef if it repeats.",
    )


def _reward_flat(s: HealthSettings, reward: float) -> tuple[str, str]:
    return (
        f"The mean reward stayed at {reward:.4g} (within {s.reward_flat_tol:g}) for {s.reward_flat_steps} "
        "steps: the job is not learning.",
        "Check that the reward function can tell completions apart (test it on rollouts from the Rollouts "
        "panel), raise learning_rate, or stop the job if the reward is already at its maximum.",
    )


def _slow_reward(reward_s: float, generation_s: float) -> tuple[str, str]:
    return (
        f"Scoring took {reward_s:.3g} s per step, longer than generating the completions ({generation_s:.3g} s): "
        "the reward functions, not the GPU, set the pace.",
        "Make the reward functions cheaper (cache, batch, avoid network calls per completion) or run their "
        "slow part once per prompt.",
    )


# -- the runner's side ---------------------------------------------------------------------------


class HealthMonitor:
    """The JobHealth of each GRPO job the runner follows, made when its first metrics arrive."""

    def __init__(self) -> None:
        self.jobs: dict[str, JobHealth] = {}

    def observe(self, job: dict, points: list[tuple[int, dict[str, float]]], raised: Any = None) -> list[dict]:
        """The alerts these newly ingested points raise. `raised`, called once per job, lists
        the alert kinds already recorded for it (a restarted server does not raise them again)."""
        if job.get("method") != "grpo" or not points:
            return []
        health = self.jobs.get(job["id"])
        if health is None:
            hp = job.get("hyperparameters") or {}
            health = JobHealth(settings_of(job), hp.get("max_response_length"), set(raised() if raised else ()))
            self.jobs[job["id"]] = health
        alerts: list[dict] = []
        for step, values in points:
            alerts += health.observe(step, values)
        return alerts

    def forget(self, job_id: str) -> None:
        self.jobs.pop(job_id, None)


def stops(job: dict) -> bool:
    """Whether the job asked to be stopped at its first alert."""
    return settings_of(job).on_alert == "stop"


def failure_message(alert: dict) -> str:
    return (
        f"Stopped by its health check at step {alert['step']} ({alert['alert']}; hyperparameters.health.on_alert "
        f"is stop): {alert['message']} What to try: {alert['advice']}"
    )


def alerts(store: Any, job_id: str, limit: int = 10_000) -> list[dict]:
    """The job's health alerts, oldest first, as the job page shows them."""
    return [e for e in store.list_events(job_id, limit) if e["event_type"] == EVENT]

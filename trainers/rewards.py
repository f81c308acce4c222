"""Uploaded reward functions, loaded in the trainer process and guarded: an exception, a NaN
or a wrong-length result stops the job with `reward_function_error`, the exception text and the
prompt it was scoring, instead of training on garbage."""

from __future__ import annotations

import importlib.util
import math
import numbers
import traceback
from collections.abc import Callable
from pathlib import Path

from trainers.contract import RewardFunctionConfig
from trainers.errors import TrainerError


def load(entries: list[RewardFunctionConfig]) -> tuple[list[Callable], list[float]]:
    """(guarded functions, weights) for config.reward_functions."""
    functions, weights, names = [], [], set()
    for i, entry in enumerate(entries):
        # Metric keys are rewards/<name>/mean: two functions of one name must not share them.
        name = entry.name if entry.name not in names else f"{entry.name}_{i}"
        names.add(name)
        functions.append(guard(_import(entry), name))
        weights.append(float(entry.weight))
    return functions, weights


def _import(entry: RewardFunctionConfig) -> Callable:
    spec = importlib.util.spec_from_file_location(f"reward_{entry.id}", entry.path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    try:
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    except Exception as err:  # noqa: BLE001 - user code: report it, whatever it raised
        raise TrainerError(
            "reward_function_error",
            f"Reward function '{entry.name}' failed to load: {type(err).__name__}: {err}\n{_where(err)}",
        ) from None
    return getattr(module, entry.entrypoint)


def _where(err: BaseException) -> str:
    """The user's own frames of the traceback (ours add nothing), most recent last."""
    ours = str(Path(__file__).parent)
    frames = [f for f in traceback.extract_tb(err.__traceback__) if not f.filename.startswith(ours)]
    return "".join(traceback.format_list(frames[-3:])).rstrip()


def _short(value: object, limit: int = 500) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def guard(function: Callable, name: str) -> Callable:
    def reward(prompts: list, completions: list, **kwargs: object) -> list[float | None]:
        try:
            result = function(prompts=prompts, completions=completions, **kwargs)
        except Exception as err:  # noqa: BLE001 - user code
            raise TrainerError(
                "reward_function_error",
                f"Reward function '{name}' raised {type(err).__name__}: {err}\n"
                f"while scoring the prompt: {_short(prompts[0])}\n{_where(err)}",
            ) from None
        try:
            values = list(result)
        except TypeError:
            raise TrainerError(
                "reward_function_error",
                f"Reward function '{name}' returned {type(result).__name__}; it must return a list with one "
                "float (or None) per completion.",
            ) from None
        if len(values) != len(completions):
            raise TrainerError(
                "reward_function_error",
                f"Reward function '{name}' returned {len(values)} rewards for {len(completions)} completions.",
            )
        for i, value in enumerate(values):
            bad = not (value is None or (isinstance(value, numbers.Real) and not isinstance(value, bool)))
            if bad or (value is not None and not math.isfinite(float(value))):
                raise TrainerError(
                    "reward_function_error",
                    f"Reward function '{name}' returned {value!r} for completion {i}; rewards must be finite "
                    f"numbers or None.\nPrompt: {_short(prompts[i])}\nCompletion: {_short(completions[i])}",
                )
        return [None if v is None else float(v) for v in values]

    # TRL names the per-function metrics (rewards/<name>/mean) after __name__.
    reward.__name__ = name
    return reward

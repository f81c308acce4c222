"""Uploaded reward functions, loaded in the trainer process and guarded: an exception, a NaN,
a wrong-length result or a call longer than `reward_timeout_s` stops the job with
`reward_function_error`, the exception text and the prompt it was scoring, instead of training on
garbage (or waiting forever)."""

from __future__ import annotations

import importlib.util
import math
import numbers
import signal
import threading
import traceback
from collections.abc import Callable
from pathlib import Path

from trainers.contract import RewardFunctionConfig
from trainers.errors import TrainerError


def load(entries: list[RewardFunctionConfig], timeout_s: float | None = None) -> tuple[list[Callable], list[float]]:
    """(guarded functions, weights) for config.reward_functions; each call of one may take at most
    `timeout_s` seconds (None: no limit)."""
    functions, weights, names = [], [], set()
    for i, entry in enumerate(entries):
        # Metric keys are rewards/<name>/mean: two functions of one name must not share them.
        name = entry.name if entry.name not in names else f"{entry.name}_{i}"
        names.add(name)
        functions.append(guard(_import(entry), name, timeout_s))
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


class _TimedOut(BaseException):
    """A BaseException, so that a reward's own `except Exception` cannot swallow its time limit."""


def _call(function: Callable, timeout_s: float | None, kwargs: dict) -> object:
    if not timeout_s:
        return function(**kwargs)
    if threading.current_thread() is threading.main_thread():
        return _call_with_alarm(function, timeout_s, kwargs)
    return _call_in_thread(function, timeout_s, kwargs)


def _call_with_alarm(function: Callable, timeout_s: float, kwargs: dict) -> object:
    """TRL calls the rewards in the training loop, the main thread: there SIGALRM interrupts the
    function itself (a sleep, a loop, a blocking read), so nothing of it keeps running."""

    def expire(signum: int, frame: object) -> None:
        raise _TimedOut

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        return function(**kwargs)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _call_in_thread(function: Callable, timeout_s: float, kwargs: dict) -> object:
    """Signals reach only the main thread: elsewhere the call runs in a daemon thread we stop
    waiting for. It cannot be interrupted, but the job fails and the process exits around it."""
    outcome: dict[str, object] = {}

    def target() -> None:
        try:
            outcome["value"] = function(**kwargs)
        except BaseException as err:  # noqa: BLE001 - re-raised in the caller's thread
            outcome["error"] = err

    worker = threading.Thread(target=target, name="reward-function", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise _TimedOut
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]


def guard(function: Callable, name: str, timeout_s: float | None = None) -> Callable:
    def reward(prompts: list, completions: list, **kwargs: object) -> list[float | None]:
        try:
            result = _call(function, timeout_s, {"prompts": prompts, "completions": completions, **kwargs})
        except _TimedOut:
            raise TrainerError(
                "reward_function_error",
                f"Reward function '{name}' did not return within {timeout_s:g} s (reward_timeout_s) "
                f"while scoring the prompt: {_short(prompts[0])}",
            ) from None
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

"""OpenReward environments as a GRPO job's prompts and rewards, through the official `openreward`
client speaking the Open Reward Standard to the service (or to a self-hosted ORS server).

GRPO here is single-turn: the prompt of each task (one ORS session per task, opened at start)
becomes a dataset row, and each completion is graded in a fresh session for its task by the
environment's answer tool: its `@terminal` tool, whose one argument receives the assistant's
message (the ORS convention for "answer in plain text"), or else its only tool taking one text
field (the shape of `orwd init`'s template). The reward is that tool's `reward`.

TRL's own bridge (`trl.experimental.openreward`) drives multi-turn tool calling through
GRPOTrainer's `environment_factory`: it needs a model that writes tool calls in its chat
template, and it grades only when the model calls a tool. It does not fit a plain-text answer
or a small base model, so this is our own thin adapter over the same client.

Every rollout is one call with a timeout, retried on transport failures (the client itself also
retries connections); a failure that retrying cannot fix (the environment's tool raised, the
service refused) or retries that run out stop the job with `provider_error` and the service's
own words.
"""

from __future__ import annotations

import asyncio
import atexit
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from trainers.contract import JobConfig, OpenRewardConfig
from trainers.errors import TrainerError
from trainers.progress import log

CALL_TIMEOUT_S = 120.0  # one rollout: open a session, grade, close; a sandbox may take a while
ATTEMPTS = 2  # of a whole rollout; the client already retries a refused connection three times
CONCURRENCY = 16  # sessions in flight at once per job
RETRY_DELAY_S = 1.0


@dataclass(frozen=True)
class AnswerTool:
    """The tool a completion is handed to, and the argument that receives it (None: no argument)."""

    name: str
    arg: str | None


class ProviderFailure(Exception):
    """A call that retrying will not fix."""


def describe(err: BaseException) -> str:
    """An exception of the client or the transport as a sentence a person can act on."""
    from openreward.api._session.http import AuthenticationError
    from openreward.api.errors import MaxRetriesError, ToolCallError, ToolFailed

    if isinstance(err, MaxRetriesError) and err.errors:
        return describe(err.errors[-1])
    if isinstance(err, AuthenticationError):  # its own message is a coloured banner for a terminal
        return "it refused the API key (401); store a valid one with PUT /v1/settings/integrations/openreward"
    if isinstance(err, asyncio.TimeoutError | TimeoutError):
        return f"no answer within {CALL_TIMEOUT_S:g} s"
    if isinstance(err, ToolFailed):
        return f"its tool failed: {_without_session_prefix(err.message)}"
    if isinstance(err, ToolCallError):
        return f"it refused the tool call ({err.reason}): {err.detail}"
    status = getattr(err, "status", None)
    if isinstance(status, int):
        detail = getattr(err, "message", "") or str(err)
        return f"it answered HTTP {status}: {detail}"
    text = _without_session_prefix(str(err))
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _without_session_prefix(text: str) -> str:
    """The client prefixes messages with `(environment session sid=...)`; the id helps nobody here."""
    return text.split(") ", 1)[1] if text.startswith("(environment session sid=") else text


def _transient(err: BaseException) -> bool:
    """Whether a retry may succeed: transport failures and a proxy's 429/502/503/504, not a
    tool that raised or refused, nor an answer the service meant (4xx, 500)."""
    import aiohttp
    from openreward.api.errors import ToolCallError, ToolFailed, TransportError

    if isinstance(err, ToolFailed | ToolCallError):
        return False
    status = getattr(err, "status", None)
    if isinstance(status, int):
        return status in (429, 502, 503, 504)
    return isinstance(err, TransportError | aiohttp.ClientError | asyncio.TimeoutError | TimeoutError | OSError)


def _join_text(blocks: Any) -> str:
    if isinstance(blocks, str):
        return blocks
    return "\n".join(b.text for b in blocks if getattr(b, "type", None) == "text" and b.text)


def _answer_tool(name: str, terminal: Any, tools: list[Any]) -> AnswerTool:
    if terminal is not None:
        return AnswerTool(terminal.name, terminal.arg)
    single = []
    for spec in tools:
        properties = (spec.input_schema or {}).get("properties") or {}
        if len(properties) == 1 and next(iter(properties.values())).get("type", "string") == "string":
            single.append(AnswerTool(spec.name, next(iter(properties))))
    if len(single) == 1 and len(tools) == 1:
        return single[0]
    names = ", ".join(t.name for t in tools) or "none"
    raise TrainerError(
        "environment_not_supported",
        f"Environment '{name}' has no @terminal tool and not exactly one tool taking a single text "
        f"argument (its tools: {names}); veri-box trains single-turn answers and cannot hand a completion "
        "to it. Multi-turn tool use is not supported yet.",
    )


class Environments:
    """The job's environments over one client, on an event loop of its own in a daemon thread:
    TRL calls reward functions synchronously, and the client's sessions are asynchronous."""

    def __init__(self, settings: OpenRewardConfig | None, environments: dict[str, Any]):
        from openreward import AsyncEnvironmentsAPI

        if settings is None:
            raise TrainerError(
                "integration_not_configured",
                "The OpenReward integration was removed before the job started; set it with "
                "PUT /v1/settings/integrations/openreward and submit the job again.",
            )
        self.session_url = settings.session_url
        self.splits = {name: list(spec["splits"]) for name, spec in environments.items()}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="openreward", daemon=True)
        self._thread.start()
        self._api, self._envs = self._run(self._connect(AsyncEnvironmentsAPI, settings))
        self.tools: dict[str, AnswerTool] = {}
        self._noted: set[tuple[str, str]] = set()

    async def _connect(self, cls: type, settings: OpenRewardConfig) -> tuple[Any, dict[str, Any]]:
        # aiohttp binds its sessions to the loop that creates them: make the client on ours.
        api = cls(settings.session_url, settings.api_key, api_base_url=settings.api_url)
        return api, {name: api.get(*_route(name)) for name in self.splits}

    def _run(self, coro: Coroutine) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        try:
            asyncio.run_coroutine_threadsafe(self._api.aclose(), self._loop).result(timeout=5)
        except Exception:  # noqa: BLE001 - best effort: the service reaps idle sessions itself
            pass
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)

    # -- one call, with a timeout and retries ----------------------------------------------------

    async def _call(self, name: str, what: str, make: Callable[[], Coroutine]) -> Any:
        last: BaseException | None = None
        for attempt in range(ATTEMPTS):
            try:
                return await asyncio.wait_for(make(), CALL_TIMEOUT_S)
            except Exception as err:  # noqa: BLE001 - sorted into retryable or not just below
                last = err
                if not _transient(err):
                    break
                if attempt + 1 < ATTEMPTS:
                    self._note_retry(name, describe(err), what)
                    await asyncio.sleep(RETRY_DELAY_S * 2**attempt)
        tries = f" after {ATTEMPTS} attempts" if last is not None and _transient(last) else ""
        raise ProviderFailure(
            f"OpenReward environment '{name}' at {self.session_url} failed{tries} while {what}: {describe(last)}"
        )

    def _note_retry(self, name: str, problem: str, what: str) -> None:
        """Log a retry once per environment and problem: a batch's rollouts tend to fail together."""
        if (name, problem) not in self._noted:
            self._noted.add((name, problem))
            log(f"OpenReward environment '{name}': {problem}; retrying ({what})")

    def _sync(self, coro: Coroutine) -> Any:
        """Run on the client's loop; a ProviderFailure becomes the job's error."""
        try:
            return self._run(coro)
        except ProviderFailure as err:
            raise TrainerError("provider_error", str(err)) from None

    # -- start: tools and prompts ---------------------------------------------------------------

    def discover_tools(self) -> dict[str, AnswerTool]:
        async def one(name: str) -> AnswerTool:
            env = self._envs[name]
            terminal = await self._call(name, "reading its tools", env.terminal_tool)
            tools = await self._call(name, "reading its tools", env.list_tools)
            return _answer_tool(name, terminal, tools)

        self.tools = {name: self._sync(one(name)) for name in self.splits}
        for name, tool in self.tools.items():
            log(
                f"environment {name}: completions go to its tool '{tool.name}'" + (f" ({tool.arg})" if tool.arg else "")
            )
        return self.tools

    def prompt_rows(self, limit: int | None) -> list[dict]:
        """One row per task, {prompt, environment, split, task_index}, taking the environments and
        splits in turn so that a `limit` (the prompts the job can use) leaves none out."""
        per_source = self._sync(self._task_counts())
        order = _interleave({source: list(range(count)) for source, count in per_source.items()}, limit)
        log(
            "tasks: "
            + ", ".join(f"{name}/{split} {count}" for (name, split), count in per_source.items())
            + f"; reading the prompts of {len(order)}"
        )
        prompts = self._sync(self._gather(self._prompt(name, split, index) for name, split, index in order))
        rows = [
            {"prompt": text, "environment": name, "split": split, "task_index": index}
            for (name, split, index), text in zip(order, prompts)
        ]
        empty = [r for r in rows if not r["prompt"].strip()]
        if empty:
            r = empty[0]
            raise TrainerError(
                "provider_error",
                f"OpenReward environment '{r['environment']}' gave task {r['task_index']} of split '{r['split']}' "
                "a prompt with no text; GRPO here trains on text prompts.",
            )
        return rows

    async def _task_counts(self) -> dict[tuple[str, str], int]:
        counts = {}
        for name, splits in self.splits.items():
            env = self._envs[name]
            for split in splits:
                counts[(name, split)] = await self._call(
                    name, f"counting the tasks of split '{split}'", lambda e=env, s=split: e.num_tasks(s)
                )
        return counts

    async def _prompt(self, name: str, split: str, index: int) -> str:
        env = self._envs[name]

        async def read() -> str:
            async with env.session(split=split, index=index) as session:
                return _join_text(await session.get_prompt())

        return await self._call(name, f"reading the prompt of task {index} of split '{split}'", read)

    async def _gather(self, coros: Any) -> list:
        gate = asyncio.Semaphore(CONCURRENCY)

        async def gated(coro: Coroutine) -> Any:
            try:
                async with gate:
                    return await coro
            finally:
                coro.close()  # one cancelled before it started would warn "never awaited"

        tasks = [asyncio.ensure_future(gated(c)) for c in coros]
        try:
            return await asyncio.gather(*tasks)
        finally:  # the first failure ends the job: do not leave the others running
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    # -- rewards ---------------------------------------------------------------------------------

    async def _grade(self, name: str, split: str, index: int, completion: str) -> float | None:
        env, tool = self._envs[name], self.tools[name]

        async def grade() -> float | None:
            async with env.session(split=split, index=index) as session:
                output = await session.call_tool(tool.name, {tool.arg: completion} if tool.arg else {})
            return None if output.reward is None else float(output.reward)

        return await self._call(name, f"grading a completion of task {index} of split '{split}'", grade)

    def reward_functions(self) -> list[Callable]:
        """One reward function per environment, named after it (TRL logs rewards/<name>/mean):
        it grades the completions of its own tasks and gives None for the others'."""
        first = next(iter(self.splits))
        return [self._reward_function(name, labels=name == first) for name in self.splits]

    def _reward_function(self, name: str, labels: bool) -> Callable:
        def reward(
            prompts: list,
            completions: list,
            environment: list,
            split: list,
            task_index: list,
            log_extra: Callable | None = None,
            **_: Any,
        ) -> list[float | None]:
            if labels and log_extra is not None:  # each rollout's task, in its sample (one function says it)
                log_extra("environment", list(environment))
                log_extra("task", [f"{s}/{i}" for s, i in zip(split, task_index)])
            mine = [i for i, env in enumerate(environment) if env == name]
            scored = self._sync(
                self._gather(self._grade(name, split[i], int(task_index[i]), _join_text(completions[i])) for i in mine)
            )
            rewards: list[float | None] = [None] * len(completions)
            for i, value in zip(mine, scored):
                rewards[i] = value
            return rewards

        reward.__name__ = name
        return reward


def open_environments(config: JobConfig) -> Environments:
    """The job's environments with their answer tools found; closed when the trainer exits (as
    the official synchronous client closes itself), since TRL calls them until training ends."""
    environments = Environments(config.openreward, config.environments or {})
    atexit.register(environments.close)
    environments.discover_tools()
    return environments


def _route(name: str) -> tuple[str, str | None]:
    """(name, variant) for the client: `owner/name` is a catalog deployment; a bare name is an
    environment of a self-hosted server, addressed by its path (the variant), as the server
    otherwise answers with its first environment."""
    return (name, None) if "/" in name else (name, name.lower())


def _interleave(sources: dict[Any, list[int]], limit: int | None) -> list[tuple]:
    out: list[tuple] = []
    queues = {source: list(indices) for source, indices in sources.items()}
    while any(queues.values()) and (limit is None or len(out) < limit):
        for (name, split), queue in queues.items():
            if queue and (limit is None or len(out) < limit):
                out.append((name, split, queue.pop(0)))
    return out


def prompts_needed(hp: dict) -> int | None:
    """How many distinct prompts a run with max_steps can use; None (all) without it."""
    if not hp.get("max_steps"):
        return None
    return hp["max_steps"] * max(hp["global_batch_size"] // hp["rollouts_per_prompt"], 1)

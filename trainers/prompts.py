"""Turning an uploaded text dataset into GRPO prompts.

String prompts are rendered with the model's chat template (and the job's system_prompt) into
one string, so reward functions receive completions as plain strings; chat-message datasets
stay conversational, TRL's way, and their completions arrive as message lists. Every other
column is kept: TRL passes it to the reward functions as a keyword list.
"""

from __future__ import annotations

from typing import Any

from trainers.contract import DatasetConfig
from trainers.errors import TrainerError

SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
    "tool": "tool",
    "function": "tool",
}


def read_rows(dataset: DatasetConfig) -> list[dict]:
    import datasets

    kind = "parquet" if dataset.path.endswith(".parquet") else "json"
    return list(datasets.load_dataset(kind, data_files=dataset.path, split="train"))


def _until_last_assistant(messages: list[dict]) -> list[dict]:
    """The conversation up to the reply the policy should learn to write."""
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=len(messages))
    return messages[:last] or messages


def prompt_of(row: dict, fmt: str) -> tuple[Any, dict]:
    """(prompt as a string or messages, the row's other columns)."""
    if fmt in ("prompt_only", "prompt_completion"):
        prompt = row["prompt"]
        rest = {k: v for k, v in row.items() if k != "prompt"}
    elif fmt == "chatml":
        prompt = _until_last_assistant([{"role": m["role"], "content": m["content"]} for m in row["messages"]])
        rest = {k: v for k, v in row.items() if k != "messages"}
    elif fmt == "sharegpt":
        messages = [
            {"role": SHAREGPT_ROLES.get(m["from"], "user"), "content": m["value"]} for m in row["conversations"]
        ]
        prompt = _until_last_assistant(messages)
        rest = {k: v for k, v in row.items() if k != "conversations"}
    elif fmt == "alpaca":
        prompt = row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
        rest = {k: v for k, v in row.items() if k not in ("instruction", "input")}
    else:
        raise TrainerError("dataset_format_incompatible", f"GRPO needs prompts; a {fmt} dataset has none.")
    return prompt, rest


def build(
    rows: list[dict], fmt: str, tokenizer: Any, system_prompt: str | None, max_prompt_tokens: int
) -> tuple[list[dict], dict]:
    """Rows of {"prompt": ..., **columns} and counts of what was changed on the way."""
    out, truncated, dropped = [], 0, 0
    for row in rows:
        prompt, rest = prompt_of(row, fmt)
        if isinstance(prompt, str):
            prompt, cut = _render(prompt, tokenizer, system_prompt, max_prompt_tokens)
            truncated += cut
        else:
            if system_prompt and prompt[0]["role"] != "system":
                prompt = [{"role": "system", "content": system_prompt}, *prompt]
            if _length(tokenizer, prompt) > max_prompt_tokens:
                dropped += 1
                continue
        out.append({**rest, "prompt": prompt})
    if not out:
        raise TrainerError(
            "dataset_format_incompatible",
            f"Every prompt is longer than max_prompt_length ({max_prompt_tokens} tokens); raise it or shorten them.",
        )
    return out, {"truncated": truncated, "dropped": dropped}


def _render(prompt: str, tokenizer: Any, system_prompt: str | None, limit: int) -> tuple[str, int]:
    """The prompt as the model will see it; an over-long user text loses its beginning, so the
    question at its end survives."""
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    cut = 0
    for _ in range(3):
        text = _template(tokenizer, prompt, system_prompt)
        extra = len(tokenizer(text, add_special_tokens=False)["input_ids"]) - limit
        if extra <= 0:
            return text, cut
        cut = 1
        if extra >= len(ids):
            break
        ids = ids[extra:]
        prompt = tokenizer.decode(ids)
    raise TrainerError(
        "dataset_format_incompatible",
        f"max_prompt_length ({limit} tokens) leaves no room for the prompt once the chat template and "
        "system_prompt are added; raise it.",
    )


def _template(tokenizer: Any, prompt: str, system_prompt: str | None) -> str:
    if getattr(tokenizer, "chat_template", None):
        messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
            {"role": "user", "content": prompt}
        ]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return f"{system_prompt}\n\n{prompt}" if system_prompt else prompt


def _length(tokenizer: Any, messages: list[dict]) -> int:
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
        text = "\n".join(m["content"] for m in messages)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])

"""Base against trained: `python -m trainers.evaluate WORK_DIR`.

WORK_DIR/input.json in (written by veri_box/evaluations.py): the job's base model, its output
folder (a LoRA adapter or a whole fine-tuned model), the models folder, the job's reward
functions (its own copies, with their weights), the hyperparameters that shape a prompt
(system_prompt, max_prompt_length, reward_timeout_s), the dataset format and the rows (each
{prompt..., other columns}), and the sampling settings. Both models answer every prompt, each
answer is scored by every reward function exactly as the GRPO trainer scores a rollout (the
prompt rendered by trainers.prompts, the other columns as keyword lists, the functions guarded
by trainers.rewards), and the weighted sum is the answer's reward, TRL's way (a None counts as
no opinion). WORK_DIR/result.json out; a failure is WORK_DIR/error.json ({code, message,
traceback}) and exit code 1, the traceback holding only the user's own frames.

Runs on CPU in the trainers' sandbox. One copy of the base model in memory for a LoRA job: the
base answers with the adapter disabled. The heavy imports happen in main, after the argv is read.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
import types
from pathlib import Path

SPEC_FILE, RESULT_FILE, ERROR_FILE = "input.json", "result.json", "error.json"
OURS = str(Path(__file__).resolve().parent)
BATCH = 8  # prompts generated together: left-padded, as TRL batches its rollouts


class EvaluationError(Exception):
    def __init__(self, code: str, message: str, where: str | None = None):
        super().__init__(message)
        self.code, self.message, self.where = code, message, where


def _frames(err: BaseException, files: set[str]) -> str | None:
    """The user's frames of a reward function's traceback (ours and importlib's left out), the
    job's copy of a reward file named by its file name alone (the box's folders are not theirs)."""
    frames = []
    for frame in traceback.extract_tb(err.__traceback__):
        if frame.filename.startswith(OURS) or frame.filename.startswith("<frozen importlib"):
            continue
        frame.line  # noqa: B018 - read the source line now, while the file is found by its real name
        if frame.filename in files:
            frame.filename = Path(frame.filename).name
        frames.append(frame)
    return "".join(traceback.format_list(frames)).rstrip() or None


def _shown(prompt: object) -> str:
    """A prompt as the user wrote it, for the table: text, or a conversation's turns."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m.get('role', '?')}: {m.get('content', '')}" for m in prompt)  # type: ignore[union-attr]


def _text(tokenizer, prompt: object) -> str:
    """What the model reads: a rendered string prompt as is, a conversation through the chat template."""
    if isinstance(prompt, str):
        return prompt
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    return "\n".join(m["content"] for m in prompt)  # type: ignore[index]


def _generate(model, tokenizer, texts: list[str], spec: dict) -> tuple[list[str], list[list[int]]]:
    import torch

    torch.manual_seed(spec["seed"])  # each model samples from the same seed
    answers, ids = [], []
    sampling = spec["temperature"] > 0
    for start in range(0, len(texts), BATCH):
        batch = tokenizer(texts[start : start + BATCH], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(
                **batch,
                max_new_tokens=spec["max_tokens"],
                do_sample=sampling,
                temperature=spec["temperature"] if sampling else None,
                top_p=1.0 if sampling else None,
                top_k=0 if sampling else None,
                pad_token_id=tokenizer.pad_token_id,
            )
        completion = out[:, batch["input_ids"].shape[1] :]
        for row in completion.tolist():
            row = [t for t in row if t != tokenizer.pad_token_id]
            ids.append(row)
            answers.append(tokenizer.decode(row, skip_special_tokens=True))
    return answers, ids


def _score(spec: dict, rows: list[dict], completions: list, ids: list[list[int]]) -> list[dict]:
    """Each completion's {reward, rewards: {function: value}}: every function called once on
    all of them, with the keyword arguments TRL passes."""
    from trainers import rewards
    from trainers.contract import RewardFunctionConfig
    from trainers.errors import TrainerError

    entries = [RewardFunctionConfig(**r) for r in spec["reward_functions"]]
    columns: dict[str, list] = {}
    for row in rows:
        for key in row:
            if key not in ("prompt", "completion", "completion_ids") and key not in columns:
                columns[key] = [r.get(key) for r in rows]
    state = types.SimpleNamespace(global_step=0, max_steps=0, epoch=0.0, num_train_epochs=1)
    extras = {
        "completion_ids": ids,
        "trainer_state": state,
        "log_extra": lambda *args, **kwargs: None,
        "log_metric": lambda *args, **kwargs: None,
    }
    scored: list[dict] = [{"reward": None, "rewards": {}} for _ in completions]
    names: set[str] = set()
    for i, entry in enumerate(entries):
        name = entry.name if entry.name not in names else f"{entry.name}_{i}"  # as rewards.load names them
        names.add(name)
        try:
            raw = rewards._import(entry)
        except TrainerError as err:
            raise EvaluationError("reward_function_error", err.message) from None
        seen: dict[str, BaseException] = {}

        def observed(_raw=raw, _seen=seen, **kwargs: object) -> object:
            try:
                return _raw(**kwargs)
            except BaseException as err:
                _seen["error"] = err
                raise

        guarded = rewards.guard(observed, name, spec["timeout_s"])
        try:
            values = guarded(prompts=[r["prompt"] for r in rows], completions=completions, **columns, **extras)
        except TrainerError as err:
            cause = seen.get("error")
            where = _frames(cause, {e.path for e in entries}) if cause else None
            raise EvaluationError("reward_function_error", err.message, where) from None
        for k, value in enumerate(values):
            scored[k]["rewards"][name] = value
            if value is not None:
                scored[k]["reward"] = (scored[k]["reward"] or 0.0) + entry.weight * value
    return scored


def _mean(values: list) -> float | None:
    numbers = [v for v in values if v is not None]
    return sum(numbers) / len(numbers) if numbers else None


def evaluate(spec: dict) -> dict:
    import transformers

    from trainers import models, prompts
    from trainers.errors import TrainerError

    began = time.perf_counter()
    base_path = models.resolve(spec["base_model"], spec["models_dir"] or None)
    output = Path(spec["output_dir"])
    lora = (output / "adapter_config.json").is_file()
    tokenizer_source = output if (output / "tokenizer_config.json").is_file() else Path(base_path)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tokenizer_source))
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    hp = spec["hyperparameters"]
    built = []
    for row in spec["rows"]:
        shown, _ = prompts.prompt_of(row, spec["format"])
        rendered, _ = prompts.build([row], spec["format"], tokenizer, hp.get("system_prompt"), hp["max_prompt_length"])
        built.append((_shown(shown), rendered[0]))
    rows = [r for _, r in built]
    texts = [_text(tokenizer, r["prompt"]) for r in rows]
    conversational = [not isinstance(r["prompt"], str) for r in rows]

    try:
        base = transformers.AutoModelForCausalLM.from_pretrained(base_path, dtype="auto")
    except (OSError, ValueError) as err:
        raise TrainerError("model_not_found", f"Could not load the base model from {base_path}: {err}") from None
    base.eval()
    loaded_s = time.perf_counter() - began
    if lora:
        from peft import PeftModel

        trained = PeftModel.from_pretrained(base, str(output))
        trained.eval()
        with trained.disable_adapter():
            base_answers, base_ids = _generate(trained, tokenizer, texts, spec)
        trained_answers, trained_ids = _generate(trained, tokenizer, texts, spec)
    else:
        base_answers, base_ids = _generate(base, tokenizer, texts, spec)
        del base
        trained = transformers.AutoModelForCausalLM.from_pretrained(str(output), dtype="auto")
        trained.eval()
        trained_answers, trained_ids = _generate(trained, tokenizer, texts, spec)
    generated_s = time.perf_counter() - began - loaded_s

    def completion(text: str, chat: bool) -> object:
        return [{"role": "assistant", "content": text}] if chat else text

    answers = base_answers + trained_answers
    completions = [completion(a, c) for a, c in zip(answers, conversational + conversational)]
    scored = _score(spec, rows + rows, completions, base_ids + trained_ids)
    n = len(rows)
    table = [
        {
            "prompt": built[i][0],
            "base": {"answer": base_answers[i], **scored[i]},
            "trained": {"answer": trained_answers[i], **scored[n + i]},
        }
        for i in range(n)
    ]
    return {
        "rows": table,
        "base_mean": _mean([r["base"]["reward"] for r in table]),
        "trained_mean": _mean([r["trained"]["reward"] for r in table]),
        "adapter": lora,
        "seconds": {
            "load": round(loaded_s, 3),
            "generate": round(generated_s, 3),
            "total": round(time.perf_counter() - began, 3),
        },
    }


def main(work_dir: str) -> int:
    from trainers.errors import TrainerError

    work = Path(work_dir)
    try:
        spec = json.loads((work / SPEC_FILE).read_text(encoding="utf-8"))
        result = evaluate(spec)
    except EvaluationError as err:
        error = {"code": err.code, "message": err.message, "traceback": err.where}
    except TrainerError as err:
        error = {"code": err.code, "message": err.message, "traceback": None}
    else:
        (work / RESULT_FILE).write_text(json.dumps(result), encoding="utf-8")
        return 0
    print(f"error ({error['code']}): {error['message']}", flush=True)
    (work / ERROR_FILE).write_text(json.dumps(error), encoding="utf-8")
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

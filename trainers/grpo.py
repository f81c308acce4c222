"""GRPO fine-tuning of a language model with TRL, as `python -m trainers.grpo JOB_DIR`.

config.json in (trainers/contract.py); progress.jsonl, train.log and output/ out. The API's
hyperparameters map onto TRL as the README's table says; every derived value is logged.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainers import model_card, models, prompts, rewards, trackers, trl_compat
from trainers.contract import JobConfig
from trainers.errors import TrainerError
from trainers.progress import Progress, log, run, stop_requested

PER_DEVICE_BATCH_CAP = 16  # completions per forward pass and device; the rest is accumulation
SAMPLES_PER_STEP = 64
SAMPLE_FIELDS = {"type", "step", "time", "prompt", "completion", "reward", "rewards", "advantage", "group"}


def batch_split(global_batch: int, processes: int, cap: int = PER_DEVICE_BATCH_CAP) -> tuple[int, int]:
    """(per-device batch, gradient accumulation) with per_device * accumulation * processes equal
    to the API's global_batch_size (completions per optimizer step)."""
    if global_batch % processes:
        raise TrainerError(
            "invalid_hyperparameter",
            f"global_batch_size ({global_batch}) must divide evenly over the job's {processes} GPUs.",
        )
    per_process = global_batch // processes
    accumulation = next(a for a in range(1, per_process + 1) if per_process % a == 0 and per_process // a <= cap)
    return per_process // accumulation, accumulation


def grpo_args(config: JobConfig, processes: int, on_gpu: bool, bf16: bool) -> dict[str, Any]:
    hp = config.hyperparameters
    per_device, accumulation = batch_split(hp["global_batch_size"], processes)
    save = {"save_strategy": "steps", "save_steps": hp["save_steps"]} if hp["save_steps"] else {"save_strategy": "no"}
    vllm = {"use_vllm": True, "vllm_mode": "colocate"} if hp["use_vllm"] else {}
    return {
        "output_dir": config.checkpoints_dir,
        "learning_rate": hp["learning_rate"],
        "num_train_epochs": hp["num_epochs"],
        "max_steps": hp["max_steps"] or -1,
        "num_generations": hp["rollouts_per_prompt"],
        "beta": hp["kl_coef"],
        "max_completion_length": hp["max_response_length"],
        "per_device_train_batch_size": per_device,
        "gradient_accumulation_steps": accumulation,
        "temperature": hp["temperature"],
        "seed": hp["seed"],
        "reward_weights": [r.weight for r in config.reward_functions] or None,
        "logging_steps": 1,
        "report_to": [],
        "disable_tqdm": True,
        "use_cpu": not on_gpu,
        "bf16": bf16,
        trl_compat.checkpointing_key(): on_gpu,
        **save,
        **vllm,
    }


def main(job_dir: str) -> int:
    return run(job_dir, train)


def train(config: JobConfig, progress: Progress) -> int:
    progress = trackers.attach(config, progress)  # TensorBoard, and W&B when set
    import torch
    import transformers
    from peft import LoraConfig
    from trl import GRPOConfig, GRPOTrainer

    hp = config.hyperparameters
    transformers.set_seed(hp["seed"])
    on_gpu = config.devices.type != "cpu" and torch.cuda.is_available()
    bf16 = on_gpu and torch.cuda.is_bf16_supported()
    processes = max(config.devices.count, 1) if on_gpu else 1
    model_path = models.resolve(config.base_model, config.models_dir)
    log(f"base model {config.base_model} from {model_path}; {'GPU' if on_gpu else 'CPU'}, bf16={bf16}")

    tokenizer = transformers.AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    rows, functions = _prompts_and_rewards(config, tokenizer)
    import datasets

    dataset = datasets.Dataset.from_list(rows)

    args = grpo_args(config, processes, on_gpu, bf16)
    log("TRL settings: " + ", ".join(f"{k}={v}" for k, v in args.items() if k not in ("output_dir", "report_to")))
    init = {"dtype": torch.bfloat16 if bf16 else torch.float32}
    if hp["load_in_4bit"]:
        init["quantization_config"] = transformers.BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=init["dtype"],
        )
    peft_config = None
    if hp["lora_rank"]:
        peft_config = LoraConfig(
            r=hp["lora_rank"],
            lora_alpha=hp["lora_alpha"],
            lora_dropout=hp["lora_dropout"],
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        )
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(model_path, **init)
    except (OSError, ValueError) as err:
        raise TrainerError(
            "model_not_found", f"Could not load a causal language model from {model_path}: {err}"
        ) from None
    if hp["load_in_4bit"]:
        quantized = sum(type(m).__name__ == "Linear4bit" for m in model.modules())
        log(f"loaded in 4-bit (QLoRA): {quantized} linear layers quantized with bitsandbytes nf4")

    trainer = _trainer_class(GRPOTrainer)(
        model=model,
        reward_funcs=functions,
        args=GRPOConfig(**args),
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[_progress_callback(progress)],
    )
    trainer.veri_progress = progress
    trainer.remove_callback(transformers.PrinterCallback)  # our callback logs each step once, readably
    if config.resume_from:
        log(f"resuming from {config.resume_from}")
    # TRL restores the adapter or model, optimizer, scheduler, RNG and global step from a
    # checkpoint-N folder it saved itself, and skips the batches already trained on.
    trainer.train(resume_from_checkpoint=config.resume_from)
    output = Path(config.output_dir)
    if stop_requested():
        log(f"stopped on SIGTERM at step {trainer.state.global_step}")
        raise TrainerError("interrupted", f"The trainer was stopped (SIGTERM) at step {trainer.state.global_step}.")
    trainer.save_model(str(output))  # gathers and writes once, from the main process
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(str(output))
        # The base named as the job named it (not this box's cache folder), and a model card.
        model_card.finish(output, config, model_card.output_kind(config.method, hp["lora_rank"]))
        log(f"saved the {'LoRA adapter' if peft_config else 'model'} to {output}")
        progress.completed(steps=trainer.state.global_step)
    return 0


def _prompts_and_rewards(config: JobConfig, tokenizer: Any) -> tuple[list[dict], list[Callable]]:
    """The prompt rows and reward functions: the dataset's rows and the uploaded functions, or,
    for a job with environments, their tasks' prompts (the dataset is not read) and graders.
    Both before the model loads, so a service that is down fails the job at once."""
    hp = config.hyperparameters
    if config.environments:
        from trainers.environments import open_environments, prompts_needed

        environments = open_environments(config)
        source, fmt = environments.prompt_rows(prompts_needed(hp)), "prompt_only"
        functions = environments.reward_functions()
    else:
        source, fmt = prompts.read_rows(config.dataset), config.dataset.format
        functions, _ = rewards.load(config.reward_functions, timeout_s=hp.get("reward_timeout_s"))
    rows, changed = prompts.build(source, fmt, tokenizer, hp["system_prompt"], hp["max_prompt_length"])
    if changed["truncated"] or changed["dropped"]:
        log(
            f"max_prompt_length {hp['max_prompt_length']}: {changed['truncated']} prompts shortened from the start, "
            f"{changed['dropped']} chat prompts left out"
        )
    return rows, functions


def _progress_callback(progress: Progress) -> Any:
    from transformers import TrainerCallback

    class ProgressCallback(TrainerCallback):
        """Every logged step's metrics, each checkpoint, and SIGTERM as save-and-stop."""

        def __init__(self) -> None:
            self.last = time.monotonic()
            self.tokens: float | None = None  # TRL's num_tokens (cumulative) at the last logged step

        def on_train_begin(self, args, state, control, **kwargs):
            self.last = time.monotonic()  # a step's time, not the models' loading
            if not state.is_world_process_zero:  # with several GPUs, one rank reports
                return
            progress.started(total_steps=state.max_steps)
            log(f"training for {state.max_steps} steps")

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero:
                return
            if logs and "train_runtime" in logs:  # the closing summary, not a step
                progress.event("train_summary", **logs)
                return
            now = time.monotonic()
            values = {k: v for k, v in (logs or {}).items() if isinstance(v, int | float) and math.isfinite(v)}
            # A NaN or inf cannot travel as JSON: its key is flagged, so the box's health check sees it.
            broken = [k for k, v in (logs or {}).items() if isinstance(v, float) and not math.isfinite(v)]
            values.update({f"nonfinite/{k}": 1.0 for k in broken})
            values.setdefault("step_time", now - self.last)
            tokens = values.get("num_tokens")
            # Prompt and completion tokens per second of wall time (generation, scoring, update);
            # the first step after a resume has no previous count to take the difference from.
            previous = 0.0 if state.global_step == 1 else self.tokens
            if tokens is not None and previous is not None and now > self.last:
                values["throughput/tokens_per_s"] = (tokens - previous) / (now - self.last)
            self.tokens = tokens
            self.last = now
            progress.metrics(state.global_step, values)
            shown = ", ".join(f"{k} {values[k]:.4g}" for k in ("loss", "reward", "reward_std", "kl") if k in values)
            log(f"step {state.global_step}/{state.max_steps}: {shown}")

        def on_save(self, args, state, control, **kwargs):
            path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if state.is_world_process_zero and path.is_dir():
                progress.checkpoint(state.global_step, path)
                log(f"checkpoint saved: {path}")

        def on_step_end(self, args, state, control, **kwargs):
            if stop_requested():
                control.should_save = True
                control.should_training_stop = True

    return ProgressCallback()


def _trainer_class(base: type) -> type:
    class VeriGRPOTrainer(base):  # type: ignore[misc, valid-type]
        """TRL's trainer, also reporting the rollouts behind each logged step as samples."""

        veri_progress: Progress
        _veri_last: list | None = None
        _veri_seconds: dict | None = None

        # Seconds spent generating and scoring since the last logged step, logged as timing/*
        # (TRL's own profiling only reaches W&B and MLflow): the box's health check compares them.
        def _veri_timed(self, part: str, call: Callable, *args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return call(*args, **kwargs)
            finally:
                self._veri_seconds = self._veri_seconds or {}
                self._veri_seconds[part] = self._veri_seconds.get(part, 0.0) + time.perf_counter() - started

        def _generate(self, *args: Any, **kwargs: Any) -> Any:
            return self._veri_timed("generation", super()._generate, *args, **kwargs)

        def _calculate_rewards(self, *args: Any, **kwargs: Any) -> Any:
            return self._veri_timed("reward", super()._calculate_rewards, *args, **kwargs)

        def _get_train_sampler(self, dataset: Any = None) -> Any:
            return trl_compat.replayable(super()._get_train_sampler(dataset))

        def log(self, logs: dict, start_time: float | None = None) -> None:
            seconds, self._veri_seconds = self._veri_seconds or {}, None
            if "train_runtime" not in logs and {"generation", "reward"} <= seconds.keys():
                logs = {**logs, "timing/generation_s": seconds["generation"], "timing/reward_s": seconds["reward"]}
            super().log(logs, start_time)
            logged = trl_compat.rollouts(self)
            if not logged.completions or logged.completions == self._veri_last or not trl_compat.is_main_process(self):
                return
            self._veri_last = logged.completions
            # Columns reward functions added with TRL's log_extra (an environment's task, say).
            extra = {k: v for k, v in logged.extra.items() if k not in SAMPLE_FIELDS}
            weights = trl_compat.reward_weights(self)
            group = trl_compat.group_size(self)
            for i, (prompt, completion) in enumerate(zip(logged.prompts, logged.completions)):
                if i >= SAMPLES_PER_STEP:
                    break
                per_function = {n: _finite(values[i]) for n, values in logged.rewards.items()}
                total = sum(w * v for w, v in zip(weights, per_function.values()) if v is not None)
                self.veri_progress.sample(
                    self.state.global_step,
                    prompt=_text(prompt),
                    completion=_text(completion),
                    reward=total,
                    rewards=per_function,
                    advantage=_finite(logged.advantages[i]),
                    group=i // group,
                    **{k: v[i] for k, v in extra.items() if i < len(v)},
                )

    return VeriGRPOTrainer


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def _text(value: Any) -> str:
    """A prompt or completion as text: chat messages become `role: content` lines."""
    if isinstance(value, str):
        return value
    return "\n".join(f"{m.get('role')}: {m.get('content')}" for m in value)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

"""Experiment: does TRL's GRPOTrainer visibly raise a simple reward on the tiny offline model?

Builds the tiny random Qwen2-style model of `trainers/tiny.py` (seeded with --seed) in a temp
dir, and trains it with `trl.GRPOTrainer` on the CPU for --steps optimizer steps on a small
prompt-only dataset, with the reward "fraction of the completion's characters that are
--target" (default "a"). Full fine-tuning or LoRA (r=8, alpha=16, all-linear), per --mode.

Prints the mean of TRL's logged "reward" over the first 5 and the last 5 steps, their difference
(target: >= 0.1), the seconds per step, and a final line `JSON {...}` with every figure. Exit
status 0 only when the delta reaches --min-delta. Needs no model hub (HF_HUB_OFFLINE=1 is set).

    .venv/bin/python bench/tiny_grpo_learning.py --mode lora --seed 0
    .venv/bin/python bench/tiny_grpo_learning.py --mode full --steps 30 --seed 1 --json out.jsonl

Defaults that learn (2-core CPU, torch 2.13, transformers 5.24, TRL 1.16): 32 completions per step
(per_device_train_batch_size=32, num_generations=8, i.e. 4 prompts x 8), max_completion_length 16,
temperature 1.0, beta 0.001, constant learning rate 5e-2 (LoRA) or 1e-2 (full), no gradient
checkpointing. Over seeds 0-4 the delta was 0.21-0.46 (LoRA) and 0.22-0.46 (full); the reward
climbs from ~0.04 to 0.25-0.5 (the policy collapses onto "atatat..." or " a a a"), at ~0.1-0.2 s
per step; the whole script takes ~15 s. Ten times smaller learning rates barely move the reward
in 30 steps. Two torch processes with 2 threads each on 2 cores slow each other 4-100x
(OpenMP oversubscription): use --threads 1 when something else is running.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Settings that learn (found with this script); --lr etc. override them.
DEFAULTS = {
    "lora": dict(lr=5e-2),
    "full": dict(lr=1e-2),
}
from veri_box.demo import PROMPTS  # noqa: E402 - the demo's own prompts (after the sys.path line)


def make_reward(target: str):
    def reward(completions, **kwargs) -> list[float]:
        """Fraction of the completion's characters that are `target` (0.0 for an empty one)."""
        return [c.count(target) / len(c) if c else 0.0 for c in completions]

    reward.__name__ = "reward"
    return reward


def run(args: argparse.Namespace) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from trainers import tiny
    from trainers.tiny import build_tiny_lm

    if args.initializer_range is not None:  # research only: the shipped value is tiny.MODEL_CONFIG's
        tiny.MODEL_CONFIG["initializer_range"] = args.initializer_range
    torch.set_num_threads(args.threads)
    defaults = DEFAULTS[args.mode]
    lr = args.lr if args.lr is not None else defaults["lr"]

    class StepClock(TrainerCallback):
        def __init__(self):
            self.step_times: list[float] = []
            self.logs: list[dict] = []
            self._t = None

        def on_step_begin(self, a, state, control, **kw):
            self._t = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            self.step_times.append(time.perf_counter() - self._t)

        def on_log(self, a, state, control, logs=None, **kw):
            if logs and "reward" in logs:
                self.logs.append(dict(logs, step=state.global_step))

    with tempfile.TemporaryDirectory(prefix="tiny-grpo-") as tmp:
        t0 = time.perf_counter()
        model_dir = build_tiny_lm(Path(tmp) / "model", seed=args.seed)
        build_s = time.perf_counter() - t0
        model = AutoModelForCausalLM.from_pretrained(model_dir)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        dataset = Dataset.from_dict({"prompt": PROMPTS * (args.prompts // len(PROMPTS))})
        peft_config = None
        if args.mode == "lora":
            from peft import LoraConfig

            peft_config = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM")
        config = GRPOConfig(
            output_dir=str(Path(tmp) / "out"),
            use_cpu=True,
            bf16=False,
            fp16=False,
            report_to=[],
            logging_steps=1,
            save_strategy="no",
            max_steps=args.steps,
            per_device_train_batch_size=args.batch,
            gradient_accumulation_steps=1,
            num_generations=args.num_generations,
            max_completion_length=args.max_completion_length,
            temperature=args.temperature,
            learning_rate=lr,
            lr_scheduler_type="constant",
            warmup_steps=0,
            beta=args.beta,
            activation_checkpointing=False,  # transformers 5 name; TRL defaults gradient_checkpointing=True
            seed=args.seed,
            data_seed=args.seed,
            disable_tqdm=True,
            dataloader_num_workers=0,
        )
        clock = StepClock()
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=make_reward(args.target),
            args=config,
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=[clock],
        )
        t0 = time.perf_counter()
        trainer.train()
        train_s = time.perf_counter() - t0
        last_completions = list(trainer._logs["completion"])[:4]

    rewards = [log["reward"] for log in clock.logs]
    first, last = statistics.fmean(rewards[:5]), statistics.fmean(rewards[-5:])
    step_s = statistics.median(clock.step_times)
    result = {
        "mode": args.mode,
        "seed": args.seed,
        "steps": len(rewards),
        "target": args.target,
        "lr": lr,
        "beta": args.beta,
        "batch": args.batch,
        "num_generations": args.num_generations,
        "max_completion_length": args.max_completion_length,
        "temperature": args.temperature,
        "initializer_range": tiny.MODEL_CONFIG["initializer_range"],
        "reward_first5": round(first, 4),
        "reward_last5": round(last, 4),
        "delta": round(last - first, 4),
        "step_s_median": round(step_s, 3),
        "step_s_max": round(max(clock.step_times), 3),
        "train_s": round(train_s, 1),
        "build_s": round(build_s, 2),
        "rewards": [round(r, 3) for r in rewards],
        "mean_length": [round(log.get("completions/mean_length", 0.0), 1) for log in clock.logs],
        "logged_keys": sorted(clock.logs[0]) if clock.logs else [],
        "sample_completions": last_completions,
    }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["lora", "full"], default="lora")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--target", default="a", help="the character whose share of the completion is the reward")
    parser.add_argument("--lr", type=float, default=None, help="default: 5e-2 for lora, 1e-2 for full")
    parser.add_argument("--beta", type=float, default=0.001)
    parser.add_argument("--batch", type=int, default=32, help="completions per step (per_device_train_batch_size)")
    parser.add_argument("--num-generations", type=int, default=8)
    parser.add_argument("--max-completion-length", type=int, default=16)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--initializer-range", type=float, default=None, help="override the tiny model's init")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--min-delta", type=float, default=0.1)
    parser.add_argument("--json", help="also append the JSON line to this file")
    args = parser.parse_args(argv)

    r = run(args)
    print(f"mode={r['mode']} seed={r['seed']} steps={r['steps']} target={r['target']!r} lr={r['lr']} beta={r['beta']}")
    print(f"reward first 5 steps: {r['reward_first5']:.3f}   last 5 steps: {r['reward_last5']:.3f}")
    print(f"delta: {r['delta']:+.3f} (target >= {args.min_delta})")
    print(f"seconds per step: median {r['step_s_median']:.2f}, max {r['step_s_max']:.2f}; train {r['train_s']:.0f} s")
    print("rewards per step:", " ".join(f"{x:.2f}" for x in r["rewards"]))
    line = "JSON " + json.dumps(r)
    print(line)
    if args.json:
        with open(args.json, "a", encoding="utf-8") as f:
            f.write(line + "\n")
    return 0 if r["delta"] >= args.min_delta else 1


if __name__ == "__main__":
    sys.exit(main())

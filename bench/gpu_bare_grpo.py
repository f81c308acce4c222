"""TRL's GRPOTrainer with nothing of the box around it: the baseline bench/gpu_check.py compares
the box's trainer (`python -m trainers.grpo`) against, with the same settings.

    python bench/gpu_bare_grpo.py build OUT_DIR --shape 0.5b     # a Qwen2.5-0.5B-shaped random model
    python bench/gpu_bare_grpo.py train --model DIR --prompts FILE --mode lora --steps 5 ...

`build` writes a random-weight Qwen2 model at Qwen2.5-0.5B's shape (hidden 896, 24 layers, 14
heads, 2 KV heads, intermediate 4864) with the built-in tiny model's tokenizer (512 tokens: no
model hub here), or at the tiny model's own shape (`--shape tiny`). `train` prints one line
`JSON {...}`: the seconds between logged steps (what the box's `step_time` metric measures),
the completions' mean length and torch's peak allocated GPU memory.

Imports nothing from veri_box or trainers except trainers.tiny's tokenizer in `build`, so the
baseline is TRL alone.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent

# Qwen2.5-0.5B's config.json, less its 151,936-token vocabulary (the tiny tokenizer's is used).
QWEN_05B = dict(
    hidden_size=896,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    intermediate_size=4864,
    max_position_embeddings=32768,
    rope_theta=1000000.0,
    rms_norm_eps=1e-6,
    initializer_range=0.02,
    tie_word_embeddings=True,
)


def reward(completions: list[str], **kwargs) -> list[float]:
    """Longer is better: cheap, and never constant (GRPO's advantages stay non-zero)."""
    return [len(c) / 1000 for c in completions]


def build(out_dir: Path, shape: str) -> dict:
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    sys.path.insert(0, str(ROOT))
    from trainers import tiny

    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = tiny._build_tokenizer()
    eos, pad = tokenizer.convert_tokens_to_ids(tiny.EOS_TOKEN), tokenizer.convert_tokens_to_ids(tiny.PAD_TOKEN)
    shape_config = QWEN_05B if shape == "0.5b" else tiny.MODEL_CONFIG
    ids = dict(vocab_size=len(tokenizer), bos_token_id=None, eos_token_id=eos, pad_token_id=pad)
    config = Qwen2Config(**ids, **shape_config)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    with torch.device(device):  # random init of 0.5B parameters takes a minute on a CPU, a second on a GPU
        model = Qwen2ForCausalLM(config)
    model.to(torch.bfloat16 if device == "cuda" else torch.float32)
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=pad, do_sample=True, temperature=1.0)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return {"path": str(out_dir), "shape": shape, "params": sum(p.numel() for p in model.parameters())}


def train(args: argparse.Namespace) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    on_gpu = torch.cuda.is_available()
    bf16 = on_gpu and torch.cuda.is_bf16_supported()
    dtype = torch.bfloat16 if bf16 else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    # The box renders a string prompt with the chat template (trainers/prompts.py): so does this.
    texts = [json.loads(line)["prompt"] for line in Path(args.prompts).read_text().splitlines() if line.strip()]
    rendered = [
        tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True)
        for t in texts
    ]
    init: dict = {"dtype": dtype}
    if args.mode == "qlora":
        init["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype
        )
    model = AutoModelForCausalLM.from_pretrained(args.model, **init)
    peft_config = None
    if args.mode in ("lora", "qlora"):
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=args.lora_rank,
            lora_alpha=2 * args.lora_rank,
            lora_dropout=0.05,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        )

    class Clock(TrainerCallback):
        """Seconds between logged steps, as the box's trainer measures its step_time."""

        def __init__(self) -> None:
            self.last = time.monotonic()
            self.step_times: list[float] = []
            self.lengths: list[float] = []

        def on_train_begin(self, a, state, control, **kw):
            self.last = time.monotonic()

        def on_log(self, a, state, control, logs=None, **kw):
            if not logs or "train_runtime" in logs:
                return
            now = time.monotonic()
            self.step_times.append(now - self.last)
            self.last = now
            self.lengths.append(float(logs.get("completions/mean_length", 0.0)))

    config = GRPOConfig(
        output_dir=str(Path(args.work_dir) / "out"),
        learning_rate=args.learning_rate,
        num_train_epochs=1,
        max_steps=args.steps,
        num_generations=args.num_generations,
        beta=0.001,
        max_completion_length=args.max_completion_length,
        per_device_train_batch_size=args.per_device,
        gradient_accumulation_steps=args.accumulation,
        temperature=1.0,
        seed=42,
        logging_steps=1,
        report_to=[],
        disable_tqdm=True,
        use_cpu=not on_gpu,
        bf16=bf16,
        activation_checkpointing=on_gpu,
        save_strategy="no",
    )
    clock = Clock()
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=reward,
        args=config,
        train_dataset=Dataset.from_list([{"prompt": p} for p in rendered]),
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[clock],
    )
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    return {
        "mode": args.mode,
        "step_times": [round(t, 4) for t in clock.step_times],
        "mean_lengths": clock.lengths,
        "torch_peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3) if on_gpu else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build")
    b.add_argument("out_dir", type=Path)
    b.add_argument("--shape", choices=["0.5b", "tiny"], default="0.5b")
    t = sub.add_parser("train")
    t.add_argument("--model", required=True)
    t.add_argument("--prompts", required=True, help="JSONL of {prompt}")
    t.add_argument("--work-dir", required=True)
    t.add_argument("--mode", choices=["full", "lora", "qlora"], default="lora")
    t.add_argument("--steps", type=int, default=5)
    t.add_argument("--num-generations", type=int, default=8)
    t.add_argument("--max-completion-length", type=int, default=256)
    t.add_argument("--per-device", type=int, default=16)
    t.add_argument("--accumulation", type=int, default=4)
    t.add_argument("--learning-rate", type=float, default=1e-6)
    t.add_argument("--lora-rank", type=int, default=16)
    args = parser.parse_args(argv)
    result = build(args.out_dir, args.shape) if args.command == "build" else train(args)
    print("JSON " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

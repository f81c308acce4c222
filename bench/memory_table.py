"""Measured peak GPU memory of training runs, and the submit-time estimator's error on each.

    .venv/bin/python bench/memory_table.py                 # the table: measured vs estimated
    .venv/bin/python bench/memory_table.py --json FILE     # also append the JSON line to FILE

`POINTS` are the runs `bench/gpu_check.py` measures on a GPU (its grpo phase: a Qwen2.5-0.5B-shaped
model, full fine-tune, LoRA r16 and QLoRA at 64 completions x 256 tokens; its video phase:
`bench/video_lora_step.py` at CogVideoX-2b's and -5b's shapes, 49 frames at 480x720, LoRA r64),
each with the settings the estimator needs. Their measured peaks come from the run reports kept
in `bench/results/*/` (`memory_fit.jsonl` rows, `gpu_check.json`'s video shapes), one measured
point per report and run; `MEASURED` holds figures measured elsewhere, with where they came
from. tests/test_memory.py holds the estimator within 20% of every measured point.

While no GPU run is reported (no bench/results/*/ report with bf16 rows or video shapes) and
`MEASURED` is empty, every point is unmeasured: the table prints the estimates a first GPU run
will be compared with, and tests/test_memory.py skips its table test, saying so.

How to fill the table on a machine with an NVIDIA GPU (its setup: bench/README.md, "GPU check";
about 9 minutes for both phases):

    OUT=/tmp/gpu_check_out python3 bench/gpu_check.py --phases grpo,video   # writes $OUT
    mkdir -p bench/results/2026-12-02-H100-80GB       # YYYY-MM-DD-GPUTYPE, GET /v1/gpu/availability's name
    cp /tmp/gpu_check_out/{gpu_check.json,gpu_check.md,memory_fit.jsonl} bench/results/2026-12-02-H100-80GB/
    .venv/bin/python bench/memory_table.py            # measured vs estimated; exit 1 if any is off by > 20%
    .venv/bin/python -m pytest -q tests/test_memory.py  # one table test per measured point, no skip

`grpo` measures the three 0.5B-shaped points (the box's trainer and the bare TRL script each, so
two figures per point), `video` the CogVideoX-2b step and the 5b one when its budget allows. A
figure measured some other way goes into `MEASURED` with its source. Commit the report folder;
when a point is off by more than 20%, correct the estimator (veri_box/memory.py), not the table.

What the two kinds of measurement see, and so what each point compares:
- gpu_check's GRPO peaks are nvidia-smi's memory.used over the idle reading: the CUDA context and
  the allocator's cache included, as the estimate's `overhead` part assumes;
- video_lora_step.py's peak is torch.cuda.max_memory_allocated of a transformer-only step (random
  latents and T5 embeddings, no VAE or T5 loaded, no context): the estimate's training phase
  without the VAE's weights and the overhead.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from veri_box import hyperparameters, memory, models  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TOLERANCE = 0.2

# bench/gpu_bare_grpo.py's model: Qwen2.5-0.5B's shape with the tiny tokenizer (358 M parameters).
QWEN_0_5B_SHAPE = {
    "hidden_size": 896,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "intermediate_size": 4864,
    "vocab_size": 512,
    "tie_word_embeddings": True,
    "model_type": "qwen2",
}
# gpu_check's prompts: 24 digits and spaces, one token each with the tiny tokenizer, plus ChatML.
GPU_CHECK_PROMPT_TOKENS = 2 * 24 + 8
# bench/video_lora_step.py's SHAPES / COMMON (CogVideoX-2b's and -5b's transformer/config.json).
COGVIDEOX = {
    "2b": {"num_attention_heads": 30, "num_layers": 30},
    "5b": {"num_attention_heads": 48, "num_layers": 42},
}
COGVIDEOX_COMMON = {
    "attention_head_dim": 64,
    "in_channels": 16,
    "time_embed_dim": 512,
    "text_embed_dim": 4096,
    "patch_size": 2,
    "temporal_compression_ratio": 4,
    "max_text_seq_length": 226,
}

# Figures measured elsewhere: {"point": name in POINTS, "peak_gib": ..., "source": "..."}.
MEASURED: list[dict[str, Any]] = []


def grpo_point(mode: str) -> dict[str, Any]:
    hp = {"global_batch_size": 64, "max_response_length": 256, "max_prompt_length": 128, "rollouts_per_prompt": 8}
    if mode != "full":
        hp.update(lora_rank=16, load_in_4bit=mode == "qlora")
    config = {**QWEN_0_5B_SHAPE, "parameters": models.lm_parameters(QWEN_0_5B_SHAPE)}
    return {
        "name": f"grpo-0.5b-shape-{mode}",
        "kind": "causal_lm",
        "method": "grpo",
        "config": config,
        "hyperparameters": hyperparameters.resolve("grpo", hp),
        "prompt_tokens": GPU_CHECK_PROMPT_TOKENS,
        "exclude": [],
        "match": {"method": mode, "completions": 64, "tokens": 256},
    }


def video_point(shape: str) -> dict[str, Any]:
    transformer = {**COGVIDEOX_COMMON, **COGVIDEOX[shape]}
    config = {
        "transformer": transformer,
        "transformer_parameters": models.cogvideox_transformer_parameters(transformer),
        "text_encoder_parameters": 0,
        "vae_parameters": 0,
    }
    hp = hyperparameters.resolve("sft_video_gen", {"lora_rank": 64, "num_frames": 49, "height": 480, "width": 720})
    return {
        "name": f"video-lora-step-{shape}",
        "kind": "cogvideox",
        "method": "sft_video_gen",
        "config": config,
        "hyperparameters": hp,
        "prompt_tokens": None,
        "phase": "training",
        "exclude": ["vae_weights", "overhead"],  # a transformer-only step, max_memory_allocated
        "match": {"shape": shape},
    }


POINTS = [grpo_point("full"), grpo_point("lora"), grpo_point("qlora"), video_point("2b"), video_point("5b")]


def estimate_gib(point: dict[str, Any]) -> float:
    """The estimate of what the point measured (its phase, less the parts it did not hold)."""
    phases = memory.phases(point["kind"], point["config"], point["hyperparameters"], 1, point["prompt_tokens"])
    assert phases is not None, point["name"]
    if point.get("phase"):
        parts = phases[point["phase"]]
    else:
        parts = max(phases.values(), key=lambda p: sum(p.values()))
    return sum(v for k, v in parts.items() if k not in point["exclude"]) / memory.GIB


def reported(results: Path = RESULTS) -> list[dict[str, Any]]:
    """Measured peaks from the GPU check reports in `results`: one per GRPO run (the box's
    trainer and the bare TRL script each) and per video shape."""
    found: list[dict[str, Any]] = []
    for report in sorted(results.glob("*/")):
        fit = report / "memory_fit.jsonl"
        rows = [json.loads(line) for line in fit.read_text().splitlines() if line.strip()] if fit.exists() else []
        for row in rows:
            if row.get("dtype") != "bfloat16" or row.get("peak_gib") is None:
                continue  # a --cpu run: RSS of fp32 tiny shapes says nothing of a GPU
            for point in POINTS:
                if point["method"] == "grpo" and all(row.get(k) == v for k, v in point["match"].items()):
                    found.append(
                        {
                            "point": point["name"],
                            "peak_gib": row["peak_gib"],
                            "source": f"{fit.relative_to(results.parent)} ({row.get('trainer')}, {row.get('device')})",
                        }
                    )
        check = report / "gpu_check.json"
        video = (json.loads(check.read_text()).get("phases", {}).get("video") or {}) if check.exists() else {}
        for shape, result in (video.get("shapes") or {}).items():
            if result.get("status") == "ok" and result.get("peak_memory_gib") is not None:
                found.append(
                    {
                        "point": f"video-lora-step-{shape}",
                        "peak_gib": result["peak_memory_gib"],
                        "source": f"{check.relative_to(results.parent)} ({result.get('device')})",
                    }
                )
    return found


def measured(results: Path = RESULTS) -> list[dict[str, Any]]:
    return MEASURED + reported(results)


def table(results: Path = RESULTS) -> list[dict[str, Any]]:
    by_name = {p["name"]: p for p in POINTS}
    rows = []
    figures = measured(results)
    for point in POINTS:
        estimate = round(estimate_gib(point), 2)
        mine = [m for m in figures if m["point"] == point["name"]]
        for m in mine or [{"peak_gib": None, "source": "not measured yet"}]:
            error = (estimate - m["peak_gib"]) / m["peak_gib"] if m["peak_gib"] else None
            rows.append(
                {
                    "point": point["name"],
                    "estimate_gib": estimate,
                    "measured_gib": m["peak_gib"],
                    "error": None if error is None else round(error, 3),
                    "source": m["source"],
                }
            )
    assert all(r["point"] in by_name for r in rows)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = table(args.results)
    print(f"{'point':<24} {'estimate GiB':>12} {'measured GiB':>12} {'error':>7}  source")
    for r in rows:
        measured_text = "-" if r["measured_gib"] is None else f"{r['measured_gib']:.2f}"
        error = "-" if r["error"] is None else f"{r['error']:+.0%}"
        print(f"{r['point']:<24} {r['estimate_gib']:>12.2f} {measured_text:>12} {error:>7}  {r['source']}")
    line = "JSON " + json.dumps({"rows": rows, "tolerance": TOLERANCE})
    print(line)
    if args.json:
        with args.json.open("a") as f:
            f.write(line + "\n")
    return 0 if all(r["error"] is None or abs(r["error"]) <= TOLERANCE for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

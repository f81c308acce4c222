"""Does the video trainer learn? Train the tiny CogVideoX pipeline's LoRA on clips of moving
squares with `python -m trainers.video`, then compare the diffusion loss of the base transformer
and of base + the delivered LoRA on the training clips, at fixed timesteps and noise.

    .venv/bin/python bench/tiny_video_learning.py [--steps 200] [--rank 16] [--lr 2e-3] [--seeds 0 1]

The per-step training loss is too noisy to read (each step draws its own timestep), so the
evaluation holds everything fixed: the same 64 (timestep, noise) draws per clip for both models,
through the trainer's own `diffusion_loss`. Prints a table and one `JSON {...}` line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from io import BytesIO
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def train(tmp: Path, model: Path, steps: int, rank: int, lr: float, seed: int) -> tuple[Path, float]:
    from trainers.tiny_video import squares_zip

    data = tmp / "data"
    zipfile.ZipFile(BytesIO(squares_zip(n=4, frames=12))).extractall(data)
    job = tmp / f"job-{seed}"
    job.mkdir()
    hp = {
        "learning_rate": lr,
        "num_epochs": 1,
        "max_steps": steps,
        "lora_rank": rank,
        "lora_alpha": rank,
        "num_frames": 9,
        "height": 32,
        "width": 32,
        "batch_size": 1,
        "gradient_accumulation_steps": 1,
        "validation_prompts": [],
        "validation_steps": None,
        "save_steps": None,
        "seed": seed,
    }
    config = {
        "base_model": str(model),
        "dataset": {"path": str(data), "format": "video_captions"},
        "hyperparameters": hp,
        "devices": {"type": "cpu", "count": 1, "indices": [0]},
        "job_dir": str(job),
        "output_dir": str(job / "output"),
    }
    (job / "config.json").write_text(json.dumps(config))
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "trainers.video", str(job)], cwd=REPO, check=True, capture_output=True)
    return job, time.monotonic() - started


def fixed_loss(pipe, cache: list[Path], draws: int) -> float:
    import torch
    from diffusers import CogVideoXDPMScheduler

    from trainers import video_data
    from trainers.video import diffusion_loss

    scheduler = CogVideoXDPMScheduler.from_config(pipe.scheduler.config)
    hp = {"height": 32, "width": 32}
    losses = []
    with torch.no_grad():
        for i, path in enumerate(cache):
            torch.manual_seed(1000 + i)  # the same latents, timesteps and noise for both models
            for _ in range(draws):
                latents, embeds = video_data.load_batch([path], pipe.vae.config.scaling_factor, "cpu", torch.float32)
                losses.append(diffusion_loss(pipe, scheduler, latents, embeds, hp).item())
    return statistics.fmean(losses)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--draws", type=int, default=64)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args()

    from diffusers import CogVideoXPipeline

    from trainers.tiny_video import build_tiny_video_pipeline

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = build_tiny_video_pipeline(tmp / "pipeline", seed=0)
        for seed in args.seeds:
            job, took = train(tmp, model, args.steps, args.rank, args.lr, seed)
            cache = sorted((job / "cache").glob("clip-*.pt"))
            pipe = CogVideoXPipeline.from_pretrained(model)
            base = fixed_loss(pipe, cache, args.draws)
            pipe.load_lora_weights(job / "output")
            tuned = fixed_loss(pipe, cache, args.draws)
            rows.append(
                {
                    "seed": seed,
                    "base": round(base, 4),
                    "lora": round(tuned, 4),
                    "change_pct": round(100 * (tuned - base) / base, 1),
                    "train_s": round(took, 1),
                }
            )
            print(
                f"seed {seed}: fixed-draw loss {base:.4f} (base) -> {tuned:.4f} (LoRA), "
                f"{rows[-1]['change_pct']:+.1f}%, training {took:.1f} s for {args.steps} steps"
            )
    result = {"steps": args.steps, "rank": args.rank, "lr": args.lr, "draws_per_clip": args.draws, "runs": rows}
    print("JSON " + json.dumps(result))
    return 0 if all(r["lora"] < r["base"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

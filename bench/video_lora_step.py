"""LoRA training steps of a CogVideoX transformer with random weights at a real shape: step time
and peak GPU memory, through the trainer's own code (trainers.video.add_lora / diffusion_loss).

    .venv/bin/python bench/video_lora_step.py                # CogVideoX-2b shape, 480x720, 49 frames (GPU)
    .venv/bin/python bench/video_lora_step.py --shape 5b     # CogVideoX-5b shape (rotary positions)
    .venv/bin/python bench/video_lora_step.py --shape tiny   # the tiny test pipeline's shape: runs on a CPU

No VAE or T5 is loaded: the latents [1, 13, 16, 60, 90] and T5 embeddings [1, 226, 4096] that
they would produce are random, which changes nothing for the transformer's step. On a GPU the
weights are bf16 with fp32 LoRA weights and gradient checkpointing, as in trainers/video.py.
Prints a table and one `JSON {...}` line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# CogVideoX-2b's and -5b's transformer/config.json (random weights here; the shapes are what count).
SHAPES = {
    "2b": dict(num_attention_heads=30, num_layers=30, use_rotary_positional_embeddings=False),
    "5b": dict(num_attention_heads=48, num_layers=42, use_rotary_positional_embeddings=True),
}
COMMON = dict(
    attention_head_dim=64,
    in_channels=16,
    out_channels=16,
    time_embed_dim=512,
    text_embed_dim=4096,
    sample_width=90,
    sample_height=60,
    sample_frames=49,
    patch_size=2,
    temporal_compression_ratio=4,
    max_text_seq_length=226,
)


def transformer_for(shape: str, device, dtype):
    import torch
    from diffusers import CogVideoXTransformer3DModel

    if shape == "tiny":
        from trainers.tiny_video import build_tiny_video_pipeline

        path = build_tiny_video_pipeline(Path(__import__("tempfile").mkdtemp()) / "tiny")
        return CogVideoXTransformer3DModel.from_pretrained(path, subfolder="transformer").to(device, dtype)
    with torch.device(device):
        return CogVideoXTransformer3DModel(**COMMON, **SHAPES[shape]).to(dtype)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=["2b", "5b", "tiny"], default="2b")
    parser.add_argument("--frames", type=int, default=None, help="pixel frames (default 49; tiny 9)")
    parser.add_argument("--height", type=int, default=None)
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()

    import torch
    from diffusers import CogVideoXDPMScheduler, CogVideoXPipeline

    from trainers.tiny_video import SCHEDULER_CONFIG
    from trainers.video import add_lora, diffusion_loss

    on_gpu = torch.cuda.is_available()
    device = torch.device("cuda" if on_gpu else "cpu")
    dtype = torch.bfloat16 if on_gpu else torch.float32
    tiny = args.shape == "tiny"
    frames = args.frames or (9 if tiny else 49)
    height, width = args.height or (32 if tiny else 480), args.width or (32 if tiny else 720)
    hp = {"lora_rank": args.rank, "lora_alpha": args.rank, "height": height, "width": width}

    torch.manual_seed(0)
    started = time.monotonic()
    transformer = transformer_for(args.shape, device, dtype)
    built_s = time.monotonic() - started
    base_params = sum(p.numel() for p in transformer.parameters())
    transformer = add_lora(transformer, hp, on_gpu)
    lora = [p for p in transformer.parameters() if p.requires_grad]
    pipe = CogVideoXPipeline(tokenizer=None, text_encoder=None, vae=None, transformer=transformer, scheduler=None)
    scheduler = CogVideoXDPMScheduler(**SCHEDULER_CONFIG)
    optimizer = torch.optim.AdamW(lora, lr=1e-4)

    cfg = transformer.config
    latent_frames = (frames - 1) // 4 + 1
    latents = torch.randn(1, latent_frames, cfg.in_channels, height // 8, width // 8, device=device, dtype=dtype)
    embeds = torch.randn(1, cfg.max_text_seq_length, cfg.text_embed_dim, device=device, dtype=dtype)
    tokens = latent_frames * (height // 8 // cfg.patch_size) * (width // 8 // cfg.patch_size)

    times, losses = [], []
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    for step in range(args.warmup + args.steps):
        if on_gpu:
            torch.cuda.synchronize()
        t0 = time.monotonic()
        loss = diffusion_loss(pipe, scheduler, latents, embeds, hp)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lora, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if on_gpu:
            torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.monotonic() - t0)
            losses.append(loss.item())

    result = {
        "shape": args.shape,
        "device": torch.cuda.get_device_name() if on_gpu else "cpu",
        "dtype": str(dtype).removeprefix("torch."),
        "gradient_checkpointing": bool(getattr(transformer, "gradient_checkpointing", False)),
        "frames": frames,
        "height": height,
        "width": width,
        "video_tokens": tokens,
        "base_params": base_params,
        "lora_params": sum(p.numel() for p in lora),
        "lora_rank": args.rank,
        "build_s": round(built_s, 2),
        "step_s_median": round(statistics.median(times), 4),
        "step_s_max": round(max(times), 4),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if on_gpu else None,
        "losses_finite": all(map(lambda v: v == v and abs(v) != float("inf"), losses)),
    }
    for key, value in result.items():
        print(f"{key:>24}  {value}")
    print("JSON " + json.dumps(result))
    return 0 if result["losses_finite"] else 1


if __name__ == "__main__":
    sys.exit(main())

"""Preparing a video dataset for CogVideoX LoRA training: decode, encode once, cache.

Each clip is decoded, sampled to `num_frames`, resized and centre-cropped to height x width,
encoded by the VAE, and its caption by the T5 encoder. Both results go to JOB_DIR/cache, one file
per clip, so every epoch after the first (and a resumed job) skips decoding and encoding. The VAE's
latent distribution is cached rather than one sample of it, so each step still draws a fresh
latent as the diffusers recipe does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainers import clips
from trainers.contract import DatasetConfig
from trainers.errors import TrainerError
from trainers.progress import log, stop_requested


@dataclass(frozen=True)
class Clip:
    video: Path
    caption: str


def read_rows(dataset: DatasetConfig) -> list[Clip]:
    """The clips of an uploaded video_captions dataset (the server wrote a normalised metadata.jsonl)."""
    root = Path(dataset.path)
    with open(root / "metadata.jsonl", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [Clip(root / row["video"], row["caption"]) for row in rows]


def encode_prompts(pipeline: Any, prompts: list[str], device: Any) -> Any:
    """T5 embeddings [n, max_text_seq_length, dim], padded to the length the transformer expects."""
    import torch

    with torch.no_grad():
        embeds, _ = pipeline.encode_prompt(
            prompts,
            do_classifier_free_guidance=False,
            max_sequence_length=pipeline.transformer.config.max_text_seq_length,
            device=device,
        )
    return embeds


def cache(
    pipeline: Any, rows: list[Clip], hp: dict, cache_dir: Path, device: Any, shard: tuple[int, int] = (0, 1)
) -> list[Path]:
    """One cached {latent_dist, prompt_embeds} file per clip; files already there are reused.
    With shard (r, n), only clips r, r+n, r+2n... are encoded here: n processes share the work."""
    import torch

    cache_dir.mkdir(parents=True, exist_ok=True)
    vae = pipeline.vae
    paths = []
    for i, row in enumerate(rows):
        path = cache_dir / f"clip-{i:06d}.pt"
        paths.append(path)
        if path.exists() or i % shard[1] != shard[0]:
            continue
        if stop_requested():  # a cancel during a long preparation need not wait for SIGKILL
            raise TrainerError("interrupted", f"The trainer was stopped (SIGTERM) while encoding clip {i + 1}.")
        video = clips.read_clip(row.video, hp["num_frames"], hp["height"], hp["width"])
        video = video.permute(1, 0, 2, 3).unsqueeze(0).to(device, vae.dtype)  # 1, 3, F, H, W
        with torch.no_grad():
            latent_dist = vae.encode(video).latent_dist.parameters  # 1, 2C, F', h, w (mean, logvar)
        embeds = encode_prompts(pipeline, [row.caption], device)
        tmp = path.with_suffix(".tmp")
        torch.save({"latent_dist": latent_dist[0].cpu(), "prompt_embeds": embeds[0].cpu()}, tmp)
        tmp.replace(path)  # a killed job never leaves a half-written cache file behind
        log(f"encoded clip {i + 1}/{len(rows)}: {row.video.name} ({tuple(latent_dist.shape[2:])} latents)")
    return paths


def load_batch(paths: list[Path], scaling_factor: float, device: Any, dtype: Any) -> tuple[Any, Any]:
    """(latents [B, F', C, h, w] sampled from the cached distributions and scaled, prompt_embeds)."""
    import torch
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    items = [torch.load(p, map_location="cpu", weights_only=True) for p in paths]
    params = torch.stack([item["latent_dist"] for item in items]).to(device)
    latents = DiagonalGaussianDistribution(params).sample() * scaling_factor
    embeds = torch.stack([item["prompt_embeds"] for item in items]).to(device, dtype)
    return latents.permute(0, 2, 1, 3, 4).to(dtype), embeds

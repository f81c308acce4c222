"""A tiny random CogVideoX pipeline, built offline in a second or two.

It exists for tests and the demo: no model hub is needed, it runs on a CPU at 32x32 pixels and
9 frames, and it has every part of the real thing (a T5 text encoder and its tokenizer, the
CogVideoX VAE, the CogVideoX transformer and its scheduler) so `trainers.video` runs exactly the
code it runs on THUDM/CogVideoX-2b. It is not meant to make sensible videos.

`build_tiny_video_pipeline(out_dir, seed, rotary)` writes a normal diffusers pipeline folder that
`CogVideoXPipeline.from_pretrained` loads. `rotary=False` is shaped like CogVideoX-2b (sinusoidal
position embeddings), `rotary=True` like CogVideoX-5b (rotary embeddings). `squares_zip` makes a
dataset to train it on: clips of a coloured square moving left or right, with captions.

CLI: `python -m trainers.tiny_video [OUT_DIR] [--seed N] [--rotary] [--dataset CLIPS.zip]` (the
pipeline, the clips, or both). Jobs can also name it `veri-box/tiny-cogvideox` (trainers/models.py).
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import zipfile
from pathlib import Path

HEIGHT = WIDTH = 32
NUM_FRAMES = 9
TEXT_LENGTH = 16  # the transformer's max_text_seq_length (226 in the real models)

# The tokenizer's words: enough for captions like "a red square moving right".
_WORDS = (
    "a an the of and with on in to is red green blue yellow white black square circle ball dot box "
    "moving moves slides left right up down fast slow small big bright dark background video clip"
).split()

# CogVideoX-2b's scheduler settings (v-prediction, zero terminal SNR, shifted SNR), in small.
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=True,
    steps_offset=0,
    prediction_type="v_prediction",
    rescale_betas_zero_snr=True,
    snr_shift_scale=3.0,
    timestep_spacing="trailing",
)


def _tokenizer():
    import math

    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(f"▁{w}", -math.log(len(_WORDS))) for w in _WORDS]
    pieces += [(c, -8.0) for c in "abcdefghijklmnopqrstuvwxyz0123456789.,"]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=TEXT_LENGTH)


def build_tiny_video_pipeline(out_dir: str | Path, seed: int = 0, rotary: bool = False) -> Path:
    import torch
    from diffusers import (
        AutoencoderKLCogVideoX,
        CogVideoXDDIMScheduler,
        CogVideoXPipeline,
        CogVideoXTransformer3DModel,
    )
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    tokenizer = _tokenizer()
    text_encoder = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer),
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            pad_token_id=0,
            eos_token_id=1,
        )
    )
    vae = AutoencoderKLCogVideoX(
        in_channels=3,
        out_channels=3,
        down_block_types=("CogVideoXDownBlock3D",) * 4,
        up_block_types=("CogVideoXUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8),  # four blocks: 8x spatial compression, as in the real VAE
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=2,
        temporal_compression_ratio=4,
        sample_height=HEIGHT,
        sample_width=WIDTH,
    )
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=4,
        out_channels=4,
        time_embed_dim=8,
        text_embed_dim=32,
        num_layers=2,
        sample_width=WIDTH // 8,
        sample_height=HEIGHT // 8,
        sample_frames=NUM_FRAMES,
        patch_size=2,
        temporal_compression_ratio=4,
        max_text_seq_length=TEXT_LENGTH,
        use_rotary_positional_embeddings=rotary,
    )
    pipeline = CogVideoXPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        transformer=transformer,
        scheduler=CogVideoXDDIMScheduler(**SCHEDULER_CONFIG),
    )
    out = Path(out_dir)
    pipeline.save_pretrained(out)
    return out


COLOURS = {"red": (230, 40, 40), "green": (40, 200, 60), "blue": (50, 80, 230), "yellow": (230, 210, 40)}


def square_clip(path: Path, colour: str = "red", frames: int = 12, size: int = 48, direction: int = 1) -> Path:
    """An mp4 of a `colour` square crossing a dark frame, rightwards (direction 1) or leftwards."""
    import numpy as np

    from trainers.clips import write_mp4

    video = np.full((frames, size, size, 3), 20, np.uint8)
    side = size // 3
    for i in range(frames):
        x = (i * (size - side)) // max(frames - 1, 1)
        x = x if direction > 0 else size - side - x
        video[i, size // 3 : size // 3 + side, x : x + side] = COLOURS[colour]
    return write_mp4(video, path)


def squares_zip(n: int = 4, frames: int = 12, layout: str = "metadata", extra: dict[str, bytes] | None = None) -> bytes:
    """A dataset zip of n captioned clips ("a red square moving right", ...), in the metadata.jsonl
    layout or diffusers' (prompts.txt + videos.txt); `extra` adds or replaces entries."""
    buf, colours = io.BytesIO(), list(COLOURS)
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(buf, "w") as archive:
        entries: dict[str, bytes] = {}
        rows = []
        for i in range(n):
            colour, direction = colours[i % len(colours)], 1 if i % 2 == 0 else -1
            clip = square_clip(Path(tmp) / f"clip{i}.mp4", colour, frames, direction=direction)
            entries[f"videos/clip{i}.mp4"] = clip.read_bytes()
            rows.append(
                {
                    "video": f"videos/clip{i}.mp4",
                    "caption": f"a {colour} square moving {'right' if direction > 0 else 'left'}",
                }
            )
        if layout == "metadata":
            entries["metadata.jsonl"] = "".join(json.dumps(r) + "\n" for r in rows).encode()
        else:
            entries["prompts.txt"] = "".join(r["caption"] + "\n" for r in rows).encode()
            entries["videos.txt"] = "".join(r["video"] + "\n" for r in rows).encode()
        for name, data in {**entries, **(extra or {})}.items():
            archive.writestr(name, data)
    return buf.getvalue()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", nargs="?", help="where to write the pipeline")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rotary", action="store_true", help="CogVideoX-5b-style rotary position embeddings")
    parser.add_argument("--dataset", type=Path, help="also write a zip of captioned square clips here")
    args = parser.parse_args(argv)
    if not args.out_dir and not args.dataset:
        parser.error("give OUT_DIR, --dataset, or both")
    if args.out_dir:
        print(build_tiny_video_pipeline(args.out_dir, args.seed, args.rotary))
    if args.dataset:
        args.dataset.write_bytes(squares_zip())


if __name__ == "__main__":
    main()

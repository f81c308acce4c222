"""A tiny random CogVideoX pipeline, built offline in a second or two.

It exists for tests and the demo: no model hub is needed, it runs on a CPU at 32x32 pixels and
9 frames, and it has every part of the real thing (a T5 text encoder and its tokenizer, the
CogVideoX VAE, the CogVideoX transformer and its scheduler) so `trainers.video` runs exactly the
code it runs on THUDM/CogVideoX-2b. It is not meant to make sensible videos.

`build_tiny_video_pipeline(out_dir, seed, rotary)` writes a normal diffusers pipeline folder that
`CogVideoXPipeline.from_pretrained` loads. `rotary=False` is shaped like CogVideoX-2b (sinusoidal
position embeddings), `rotary=True` like CogVideoX-5b (rotary embeddings).

CLI: `python -m trainers.tiny_video OUT_DIR [--seed N] [--rotary]`.
"""

from __future__ import annotations

import argparse
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rotary", action="store_true", help="CogVideoX-5b-style rotary position embeddings")
    args = parser.parse_args(argv)
    print(build_tiny_video_pipeline(args.out_dir, args.seed, args.rotary))


if __name__ == "__main__":
    main()

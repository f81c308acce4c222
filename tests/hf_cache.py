"""A Hugging Face cache folder as `hf download` leaves it (models--ORG--NAME/refs/main and
snapshots/HASH/...), holding models' config files without their weights: enough for the box's
submit-time model check and memory estimate, which read configs only."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

# The Hub's config.json of Qwen/Qwen3-4B and Qwen/Qwen3-0.6B (the fields the box reads).
QWEN3_4B = {
    "architectures": ["Qwen3ForCausalLM"],
    "model_type": "qwen3",
    "hidden_size": 2560,
    "num_hidden_layers": 36,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "intermediate_size": 9728,
    "vocab_size": 151936,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
}
QWEN3_0_6B = {
    **QWEN3_4B,
    "hidden_size": 1024,
    "num_hidden_layers": 28,
    "num_attention_heads": 16,
    "intermediate_size": 3072,
}
# Qwen2.5-0.5B's shape with the tiny tokenizer's vocabulary: bench/gpu_bare_grpo.py's model.
QWEN2_5_0_5B_SHAPE = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "hidden_size": 896,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "intermediate_size": 4864,
    "vocab_size": 512,
    "tie_word_embeddings": True,
}
# THUDM/CogVideoX-2b: model_index.json and its parts' configs.
COGVIDEOX_2B = {
    "model_index.json": {
        "_class_name": "CogVideoXPipeline",
        "scheduler": ["diffusers", "CogVideoXDDIMScheduler"],
        "text_encoder": ["transformers", "T5EncoderModel"],
        "tokenizer": ["transformers", "T5Tokenizer"],
        "transformer": ["diffusers", "CogVideoXTransformer3DModel"],
        "vae": ["diffusers", "AutoencoderKLCogVideoX"],
    },
    "transformer/config.json": {
        "_class_name": "CogVideoXTransformer3DModel",
        "num_attention_heads": 30,
        "attention_head_dim": 64,
        "in_channels": 16,
        "out_channels": 16,
        "num_layers": 30,
        "time_embed_dim": 512,
        "text_embed_dim": 4096,
        "sample_width": 90,
        "sample_height": 60,
        "sample_frames": 49,
        "patch_size": 2,
        "temporal_compression_ratio": 4,
        "max_text_seq_length": 226,
        "use_rotary_positional_embeddings": False,
    },
    "text_encoder/config.json": {
        "architectures": ["T5EncoderModel"],
        "d_model": 4096,
        "d_ff": 10240,
        "d_kv": 64,
        "num_heads": 64,
        "num_layers": 24,
        "vocab_size": 32128,
        "feed_forward_proj": "gated-gelu",
    },
    "vae/config.json": {"_class_name": "AutoencoderKLCogVideoX", "block_out_channels": [128, 256, 256, 512]},
}


def cache_model(cache: Path, repo_id: str, files: dict) -> Path:
    """Write a snapshot of `repo_id` into the cache: `files` maps file paths to their JSON, or is
    itself one config (config.json). Returns the snapshot folder."""
    if not any(name.endswith(".json") for name in files):
        files = {"config.json": files}
    revision = hashlib.sha1(repo_id.encode()).hexdigest()
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / revision
    for name, content in files.items():
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
        (snapshot / name).write_text(json.dumps(content))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return snapshot


def api_test_cache(cache: Path) -> Path:
    """The models the API tests name, as a user would have them in the cache."""
    cache_model(cache, "Qwen/Qwen3-4B", QWEN3_4B)
    cache_model(cache, "Qwen/Qwen3-0.6B", QWEN3_0_6B)
    cache_model(cache, "m", QWEN2_5_0_5B_SHAPE)
    cache_model(cache, "THUDM/CogVideoX-2b", COGVIDEOX_2B)
    return cache

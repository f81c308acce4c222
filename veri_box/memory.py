"""Will a job fit its GPU? A submit-time estimate of the peak GPU memory of one of the job's
GPUs, from the model's config (models.py) and the job's hyperparameters, without torch.

The estimate follows what the trainers do (trainers/grpo.py on TRL's GRPOTrainer,
trainers/video.py), phase by phase; the peak is the largest phase:

- grpo, `generation`: the weights (bf16, or NF4 4-bit for the linear layers with load_in_4bit),
  TRL's reference model (a second bf16 copy for a full fine-tune with kl_coef > 0; a LoRA's
  reference is the base with the adapter off), AdamW's two moments (bf16 like the weights for a
  full fine-tune; fp32 for a LoRA, which PEFT keeps in fp32), and the KV cache of every
  completion the process generates at once (TRL's generation batch: global_batch_size / GPUs).
- grpo, `training`: the same plus gradients and one micro-batch's activations (at most 16
  completions per pass, trainers/grpo.py's PER_DEVICE_BATCH_CAP) with activation checkpointing:
  every layer's input, one layer's recomputed activations and its backward, and the completion
  logits (vocabulary x tokens) and their gradient.
- sft_video_gen, `encoding`: T5, VAE and transformer in bf16 while clips and captions are encoded
  (tiled VAE); `training`: transformer + VAE, the LoRA's fp32 weights, gradients and AdamW, and
  checkpointed activations for batch_size x (video tokens + 226 text tokens).
- each phase also counts the CUDA context and cuBLAS workspaces (OVERHEAD_GIB).

Several GPUs train data-parallel: every GPU holds the whole model, so more GPUs only split the
batch. bench/memory_table.py holds the measured points the estimate is held to (within 20%,
tests/test_memory.py).

A deployment's fit (serve_parts, assess_serving: the serving process's weights, KV cache and
activations per GPU) reuses the same parts, card table and verdict; deployments.create refuses
with it.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from .errors import bad_request

GIB = 2**30
BF16, FP32 = 2, 4
NF4 = 0.516  # bytes per weight of bitsandbytes NF4 with double quantization (4.127 bits)
ADAMW_MOMENTS = 2
OVERHEAD_GIB = 0.75  # CUDA context, cuBLAS workspaces, allocator rounding
MICRO_BATCH_CAP = 16  # trainers/grpo.py PER_DEVICE_BATCH_CAP
LORA_PROBE_RANK = 16  # the rank a suggestion proposes
# The estimate is held within 20% of what was measured: a job is refused only when even 20%
# less would not fit, and warned about when 20% more would not.
MARGIN = 0.2
T5_TOKENS = 226  # CogVideoX's max_text_seq_length
VAE_WORKSPACE_GIB = 1.5  # the tiled, sliced VAE encode of one clip


class MemoryEstimate(msgspec.Struct, kw_only=True):
    """The estimated peak of one GPU of the job, its parts (GiB) in the peak phase, and how it
    compares with the card."""

    total_gb: float
    phase: str
    parts: dict[str, float]
    gpu_type: str | None = None
    gpu_memory_gb: float | None = None
    verdict: str | None = None  # "fits", "borderline", "will_not_fit"; None: not checked (cpu, unknown card)


def gpu_memory_gb(gpu_type: str) -> float | None:
    """The card's memory from its type name (`H100-80GB`, `A100-40GB`, `RTX4090-24GB`); None for
    the cpu pool and names without a size."""
    match = re.search(r"(\d+(?:\.\d+)?)\s*GB?\b", gpu_type, re.IGNORECASE)
    return float(match.group(1)) if match and gpu_type != "cpu" else None


# -- grpo ------------------------------------------------------------------------------------------


def _micro_batch(per_process: int) -> int:
    """trainers.grpo.batch_split's per-device batch: the largest divisor of the process's
    completions that is at most the cap."""
    return next(
        per_process // a
        for a in range(1, per_process + 1)
        if per_process % a == 0 and per_process // a <= MICRO_BATCH_CAP
    )


def lora_parameters(config: dict, rank: int) -> int:
    """PEFT's target_modules="all-linear" on a decoder layer: q, k, v, o, gate, up, down (the LM
    head is left out), each r x (in + out)."""
    h, heads = config["hidden_size"], config["num_attention_heads"]
    kv = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or h // heads
    inter = config.get("intermediate_size") or 4 * h
    per_layer = (h + heads * head_dim) * 2 + (h + kv * head_dim) * 2 + 3 * (h + inter)
    return config["num_hidden_layers"] * rank * per_layer


def kv_bytes_per_token(config: dict, kv_heads: int | None = None) -> int:
    """The bf16 KV cache of one token: a key and a value per layer and KV head (`kv_heads`: the
    heads one GPU keeps, when a tensor parallel group splits them)."""
    h, heads = config["hidden_size"], config["num_attention_heads"]
    kv = kv_heads or config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or h // heads
    return config["num_hidden_layers"] * 2 * kv * head_dim * BF16


def generation_buffers(config: dict, rows: int, prompt: int) -> int:
    """Prefill runs the prompts of the whole batch (one layer's q/k/v/o and gated MLP at a time);
    sampling keeps fp32 logits per step."""
    h, vocab = config["hidden_size"], config["vocab_size"]
    inter = config.get("intermediate_size") or 4 * h
    return rows * prompt * (4 * h + 3 * inter) * BF16 + rows * vocab * FP32 * 3


def grpo_phases(
    config: dict, hp: dict, gpu_count: int, prompt_tokens: int | None = None
) -> dict[str, dict[str, float]]:
    """Bytes per part for each phase of a GRPO job on one of its GPUs."""
    h, layers = config["hidden_size"], config["num_hidden_layers"]
    heads = config["num_attention_heads"]
    kv = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or h // heads
    inter = config.get("intermediate_size") or 4 * h
    vocab = config["vocab_size"]
    total = config["parameters"]
    embeddings = vocab * h * (1 if config.get("tie_word_embeddings", True) else 2)

    lora = bool(hp.get("lora_rank"))
    if hp.get("load_in_4bit"):
        weights = (total - embeddings) * NF4 + embeddings * BF16
    else:
        weights = total * BF16
    reference = total * BF16 if not lora and hp.get("kl_coef", 0) > 0 else 0
    if lora:
        trainable = lora_parameters(config, hp["lora_rank"])
        adapter = trainable * FP32
        optimizer = trainable * FP32 * ADAMW_MOMENTS
        gradients = trainable * FP32
    else:
        adapter, optimizer, gradients = 0, total * BF16 * ADAMW_MOMENTS, total * BF16

    per_process = max(hp["global_batch_size"] // max(gpu_count, 1), 1)
    micro = _micro_batch(per_process)
    prompt = min(hp["max_prompt_length"], prompt_tokens or hp["max_prompt_length"])
    completion = hp["max_response_length"]
    seq = prompt + completion

    static = {"weights": weights, "reference_model": reference, "lora_adapter": adapter, "optimizer_state": optimizer}
    kv_cache = per_process * seq * kv_bytes_per_token(config)
    generating = generation_buffers(config, per_process, prompt)
    boundaries = layers * micro * seq * h * BF16
    # One layer's activations during its recompute and backward: norms, q/k/v (rotated), attention
    # output, residuals and the gated MLP's four intermediate tensors, 1.5x for the gradients.
    layer = 1.5 * micro * seq * (6 * h + 3 * heads * head_dim + 3 * kv * head_dim + 4 * inter) * BF16
    logits = 2 * micro * completion * vocab * BF16  # the completion logits and their gradient
    overhead = OVERHEAD_GIB * GIB
    return {
        "generation": {**static, "kv_cache": kv_cache, "generation_buffers": generating, "overhead": overhead},
        "training": {
            **static,
            "gradients": gradients,
            "activations": boundaries + layer,
            "logits": logits,
            "overhead": overhead,
        },
    }


# -- sft_video_gen -------------------------------------------------------------------------------


def video_tokens(transformer: dict, hp: dict) -> int:
    """The transformer's video tokens: latent frames x (height/8/patch) x (width/8/patch)."""
    patch = transformer.get("patch_size", 2)
    temporal = transformer.get("temporal_compression_ratio", 4)
    latent_frames = (hp["num_frames"] - 1) // temporal + 1
    return latent_frames * (hp["height"] // 8 // patch) * (hp["width"] // 8 // patch)


def video_phases(config: dict, hp: dict) -> dict[str, dict[str, float]]:
    """Bytes per part for each phase of a CogVideoX LoRA job on one of its GPUs."""
    transformer = config["transformer"]
    inner = transformer["num_attention_heads"] * transformer["attention_head_dim"]
    layers = transformer["num_layers"]
    text = transformer.get("max_text_seq_length", T5_TOKENS)
    tokens = (video_tokens(transformer, hp) + text) * hp["batch_size"]
    weights = config["transformer_parameters"] * BF16
    vae = config["vae_parameters"] * BF16
    t5 = config["text_encoder_parameters"] * BF16
    trainable = layers * 4 * hp["lora_rank"] * 2 * inner  # to_q, to_k, to_v, to_out.0
    overhead = OVERHEAD_GIB * GIB
    # Checkpointed blocks keep their inputs (the video and the text hidden states); one block's
    # recompute holds its norms, q/k/v, attention output and the 4x GELU MLP, 1.5x for the backward.
    boundaries = layers * tokens * inner * BF16
    block = 1.5 * tokens * (10 * inner + 2 * 4 * inner) * BF16
    return {
        "encoding": {
            "transformer_weights": weights,
            "vae_weights": vae,
            "text_encoder_weights": t5,
            "vae_workspace": VAE_WORKSPACE_GIB * GIB,
            "overhead": overhead,
        },
        "training": {
            "transformer_weights": weights,
            "vae_weights": vae,
            "lora_adapter": trainable * FP32,
            "optimizer_state": trainable * FP32 * ADAMW_MOMENTS,
            "gradients": trainable * FP32,
            "activations": boundaries + block,
            "overhead": overhead,
        },
    }


# -- the estimate and the fit ------------------------------------------------------------------------


def phases(kind: str, config: dict, hp: dict, gpu_count: int, prompt_tokens: int | None = None) -> dict | None:
    """Bytes per part per phase, or None when the model's config lacks what the estimate needs
    (a built-in tiny video pipeline not built yet: negligible anyway)."""
    try:
        if kind == "causal_lm" and config.get("parameters"):
            return grpo_phases(config, hp, gpu_count, prompt_tokens)
        if kind == "cogvideox" and config.get("transformer"):
            return video_phases(config, hp)
    except (KeyError, TypeError, ZeroDivisionError, StopIteration):
        return None
    return None


def estimate(
    kind: str, config: dict, hp: dict, gpu_count: int, prompt_tokens: int | None = None
) -> MemoryEstimate | None:
    found = phases(kind, config, hp, gpu_count, prompt_tokens)
    if found is None:
        return None
    phase, parts = max(found.items(), key=lambda item: sum(item[1].values()))
    return MemoryEstimate(
        total_gb=round(sum(parts.values()) / GIB, 2),
        phase=phase,
        parts={name: round(value / GIB, 2) for name, value in parts.items() if value},
    )


def verdict(total_gb: float, card_gb: float) -> str:
    if total_gb * (1 - MARGIN) > card_gb:
        return "will_not_fit"
    if total_gb * (1 + MARGIN) > card_gb:
        return "borderline"
    return "fits"


def _single_changes(method: str, hp: dict, count: int, available: int) -> list[tuple[str, dict, int]]:
    """One change at a time, cheapest first (the least change to what the job trains):
    (what to tell the user, the new hyperparameters, the GPU count)."""
    out: list[tuple[str, dict, int]] = []
    if method == "grpo":
        rank = hp.get("lora_rank") or LORA_PROBE_RANK
        lora = {**hp, "lora_rank": rank, "lora_alpha": hp.get("lora_alpha") or 2 * rank}
        if not hp.get("lora_rank"):
            out.append((f"train a LoRA instead of the full model (lora_rank {rank})", lora, count))
        if not hp.get("load_in_4bit"):
            out.append((f"QLoRA (lora_rank {rank} with load_in_4bit true)", {**lora, "load_in_4bit": True}, count))
        for batch in _halvings(hp["global_batch_size"], hp["rollouts_per_prompt"]):
            out.append((f"global_batch_size {batch}", {**hp, "global_batch_size": batch}, count))
        for length in _halvings(hp["max_response_length"], 64):
            out.append((f"max_response_length {length}", {**hp, "max_response_length": length}, count))
    else:
        if hp["batch_size"] > 1:
            out.append(("batch_size 1 (with gradient_accumulation_steps for the rest)", {**hp, "batch_size": 1}, count))
        frames = hp["num_frames"]
        while frames > 9:
            frames = (frames - 1) // 2 // 8 * 8 + 1
            out.append((f"num_frames {frames}", {**hp, "num_frames": frames}, count))
    gpus = count * 2
    while gpus <= available:
        out.append((f"gpu.count {gpus}", hp, gpus))
        gpus *= 2
    return out


def _halvings(value: int, floor: int) -> list[int]:
    """value/2, value/4, ... while they stay multiples of `floor` (rollouts_per_prompt for a
    batch) and at least it."""
    out = []
    while value // 2 >= floor and (value // 2) % floor == 0:
        value //= 2
        out.append(value)
    return out


def _combined_changes(method: str, hp: dict, count: int) -> list[tuple[str, dict, int]]:
    """When no single change fits: QLoRA (for grpo), then halving the batch and the length in
    turn, each step keeping the ones before it."""
    if method != "grpo":
        return []
    rank = hp.get("lora_rank") or LORA_PROBE_RANK
    current = {**hp, "lora_rank": rank, "lora_alpha": hp.get("lora_alpha") or 2 * rank, "load_in_4bit": True}
    said = [f"QLoRA (lora_rank {rank} with load_in_4bit true)"] if not hp.get("load_in_4bit") else []
    out = []
    while True:
        length = _halvings(current["max_response_length"], 64)
        batch = _halvings(current["global_batch_size"], current["rollouts_per_prompt"])
        if not length and not batch:
            return out
        if length and (not batch or current["max_response_length"] >= 4 * current["global_batch_size"]):
            current = {**current, "max_response_length": length[0]}
        else:
            current = {**current, "global_batch_size": batch[0]}
        changed = [
            f"{key} {current[key]}" for key in ("global_batch_size", "max_response_length") if current[key] != hp[key]
        ]
        out.append((" and ".join(said + changed), current, count))


def cheapest_fit(
    method: str,
    kind: str,
    config: dict,
    hp: dict,
    count: int,
    card_gb: float,
    available: int,
    prompt_tokens: int | None,
) -> tuple[str, MemoryEstimate] | None:
    for what, new_hp, gpus in _single_changes(method, hp, count, available) + _combined_changes(method, hp, count):
        found = estimate(kind, config, new_hp, gpus, prompt_tokens)
        if found and verdict(found.total_gb, card_gb) == "fits":
            return what, found
    return None


class Fit(msgspec.Struct, kw_only=True):
    """The estimate against the card and, when it will not fit, what to say and the cheapest
    change that fits: what submit refuses with and what the new-job form shows as settings change."""

    estimate: MemoryEstimate
    fix: str | None = None  # the cheapest change that fits, in words (will_not_fit only)
    fix_gb: float | None = None  # the estimate with that change
    message: str | None = None  # will_not_fit's message, or the borderline warning's


def assess(
    method: str,
    kind: str,
    config: dict,
    hp: dict,
    gpu: dict,
    available: int = 0,
    prompt_tokens: int | None = None,
) -> Fit | None:
    """The job's estimate against its GPU type, with its verdict (None: not checked, for the cpu
    pool or a type name without a size), and for a job that will not fit the cheapest change that
    does. None when there is no config to estimate from. `available`: the most GPUs of the type a
    job could get, for the "more GPUs" suggestion."""
    found = estimate(kind, config, hp, gpu["count"], prompt_tokens)
    if found is None:
        return None
    card = gpu_memory_gb(gpu["type"])
    found.gpu_type = gpu["type"]
    found.gpu_memory_gb = card
    if card is None:
        return Fit(estimate=found)
    found.verdict = verdict(found.total_gb, card)
    if found.verdict == "borderline":
        return Fit(estimate=found, message=warning(found)["message"])
    if found.verdict == "fits":
        return Fit(estimate=found)
    fix = cheapest_fit(method, kind, config, hp, gpu["count"], card, available, prompt_tokens)
    advice = (
        f" The cheapest change that fits: {fix[0]} (about {fix[1].total_gb:g} GiB)."
        if fix
        else " No single change fits this card; use a GPU with more memory or a smaller model."
    )
    return Fit(
        estimate=found,
        fix=fix[0] if fix else None,
        fix_gb=fix[1].total_gb if fix else None,
        message=f"This job needs {describe(found)}; one {gpu['type']} has {card:g} GB.{advice}",
    )


def refuse(fit: Fit | None, method: str, hp: dict) -> MemoryEstimate | None:
    """Submit's rule: 400 `will_not_fit` (with the estimate, the card's memory and the cheapest
    change that fits) when clearly over, else the estimate to keep in the job."""
    if fit is None:
        return None
    if fit.estimate.verdict == "will_not_fit":
        raise bad_request("will_not_fit", fit.message or "", _param(method, hp))
    return fit.estimate


def check(
    method: str,
    kind: str,
    config: dict,
    hp: dict,
    gpu: dict,
    available: int = 0,
    prompt_tokens: int | None = None,
) -> MemoryEstimate | None:
    """assess, then refuse: the estimate with its verdict, or 400 `will_not_fit`."""
    return refuse(assess(method, kind, config, hp, gpu, available, prompt_tokens), method, hp)


def _param(method: str, hp: dict) -> str:
    if method == "grpo" and not hp.get("lora_rank"):
        return "hyperparameters.lora_rank"
    return "hyperparameters" if method == "grpo" else "hyperparameters.num_frames"


def describe(found: MemoryEstimate) -> str:
    parts = ", ".join(
        f"{name.replace('_', ' ')} {value:g}" for name, value in sorted(found.parts.items(), key=lambda p: -p[1])
    )
    return f"about {found.total_gb:g} GiB per GPU at its peak ({found.phase}: {parts})"


def to_row(found: MemoryEstimate | None) -> dict | None:
    """What `jobs.memory_estimate` stores."""
    return msgspec.to_builtins(found) if found else None


def total_gb(row: dict | None) -> float | None:
    return row.get("total_gb") if isinstance(row, dict) else None


def warning(found: MemoryEstimate) -> dict[str, Any]:
    """The `memory_warning` event's metadata for a borderline job."""
    return {
        "estimate_gb": found.total_gb,
        "gpu_memory_gb": found.gpu_memory_gb,
        "message": f"This job may run out of memory: it needs {describe(found)}, close to the "
        f"{found.gpu_memory_gb:g} GB of a {found.gpu_type}.",
    }


def prompt_tokens(dataset: dict, hp: dict) -> int:
    """A generous guess at a GRPO dataset's prompt length in tokens, from its mean row size
    (about 3 bytes a token, the whole row counted) plus the system prompt and chat markup; TRL
    pads a batch to its longest prompt, never to max_prompt_length."""
    row_bytes = dataset["bytes"] / max(dataset["num_rows"] or 1, 1)
    system = len((hp.get("system_prompt") or "").encode())
    return int((row_bytes + system) / 3) + 32


def fit_for_job(found: Any, method: str, hp: dict, gpu: dict, dataset: dict | None, available: int) -> Fit | None:
    """The fit of a job whose model `found` (models.Resolved) is known, against its GPU type;
    without a dataset yet (the new-job form before one is chosen) prompts count at
    max_prompt_length."""
    if found is None:
        return None
    tokens = prompt_tokens(dataset, hp) if method == "grpo" and dataset else None
    return assess(method, found.kind, found.config, hp, gpu, available, tokens)


def for_job(found: Any, method: str, hp: dict, gpu: dict, dataset: dict, available: int) -> MemoryEstimate | None:
    """jobs.submit's check: fit_for_job, refused when it will not fit."""
    return refuse(fit_for_job(found, method, hp, gpu, dataset, available), method, hp)


CLOUD_MOST_GPUS = 8  # the largest instances the providers rent


def most_gpus(placement: Any, gpu_type: str) -> int:
    """The most GPUs of a type one job could have, for the "more GPUs" suggestion: the box's own
    when it has the type, else a cloud instance's eight."""
    local = placement.inventory.types.get(gpu_type)
    return local.count if local else CLOUD_MOST_GPUS


# -- serving: a deployment's fit ------------------------------------------------------------------

VLLM_MEMORY_UTILIZATION = 0.9  # vLLM's default gpu_memory_utilization: the share of each card it takes
VLLM_BATCHED_TOKENS = 2048  # vLLM's profile run: one step of max_num_batched_tokens (online serving)
SERVE_PROMPT_TOKENS = 512  # the transformers engine's prefill is counted at this prompt length (it bounds none)
# vLLM's max_model_len when none is given: the smallest of these the config has.
MAX_LENGTH_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "max_sequence_length")


def max_model_len(config: dict) -> int | None:
    """The longest sequence vLLM serves the model at by default, from its config (None: none said)."""
    found = [config[k] for k in MAX_LENGTH_KEYS if isinstance(config.get(k), int) and config[k] > 0]
    return min(found) if found else None


def serve_parts(config: dict, engine: str, gpu_count: int, batch: int, context: int) -> dict[str, float]:
    """Bytes per part on one GPU of a deployment (trainers/serve.py or trainers/serve_vllm.py).

    Weights at the serving dtype, 2 bytes a parameter (transformers loads bf16 on a GPU; vLLM's
    dtype "auto" is the config's bf16/fp16, an fp32 model halved). Then, on `engine`:

    - transformers: the KV cache of a full batch (`batch` rows, serve.py's MAX_BATCH) each at
      `context` tokens (the longest answer the API allows), generation_buffers for the batch's
      prefill at SERVE_PROMPT_TOKENS, and the last position's logits (serve.py asks the model
      for those only: logits_to_keep=1).
    - vllm: the KV cache of one sequence at max_model_len (vLLM refuses to start without room for
      one; the rest of its 90% becomes more cache), and its profile run's activations
      (generation_buffers of one VLLM_BATCHED_TOKENS step).

    Several GPUs split everything but the overhead: tensor parallel (vLLM; each GPU keeps
    ceil(kv heads / count) KV heads, replicated when the group outnumbers them) or layers by
    device_map "auto" (transformers). Each GPU adds the CUDA context overhead (OVERHEAD_GIB).

    Not calibrated on a GPU yet (nothing in bench/ measures a deployment's peak against it). At
    Qwen2.5 shapes, per GPU: 14B on one card 41.2 GiB with transformers (weights 27.5, KV cache
    12, activations 1.0, overhead 0.75), 34.5 with vLLM (KV cache 6); 7B 19.6 / 17.0; 0.5B 2.7 / 2.1.
    """
    count = max(gpu_count, 1)
    weights = config["parameters"] * BF16
    if engine == "vllm":
        heads = config["num_attention_heads"]
        kv_heads = -(-(config.get("num_key_value_heads") or heads) // count)
        length = max_model_len(config) or context
        kv_cache = length * kv_bytes_per_token(config, kv_heads)
        activations = generation_buffers(config, 1, VLLM_BATCHED_TOKENS) / count
    else:
        kv_cache = batch * context * kv_bytes_per_token(config) / count
        logits = batch * config["vocab_size"] * BF16
        activations = (generation_buffers(config, batch, SERVE_PROMPT_TOKENS) + logits) / count
    overhead = OVERHEAD_GIB * GIB
    return {"weights": weights / count, "kv_cache": kv_cache, "activations": activations, "overhead": overhead}


def serve_estimate(config: dict, engine: str, gpu_count: int, batch: int, context: int) -> MemoryEstimate | None:
    """One GPU's share of a deployment (phase "serving"), or None when the config lacks what it needs."""
    if not config.get("parameters"):
        return None
    try:
        parts = serve_parts(config, engine, gpu_count, batch, context)
    except (KeyError, TypeError, ZeroDivisionError):
        return None
    return MemoryEstimate(
        total_gb=round(sum(parts.values()) / GIB, 2),
        phase="serving",
        parts={name: round(value / GIB, 2) for name, value in parts.items() if value},
    )


def serve_budget_gb(engine: str, card_gb: float) -> float:
    """What the serving process may use of one card: vLLM takes gpu_memory_utilization of it."""
    return round(card_gb * (VLLM_MEMORY_UTILIZATION if engine == "vllm" else 1.0), 2)


class ServeFit(msgspec.Struct, kw_only=True):
    """A deployment's estimate against its card: what create refuses with or records."""

    estimate: MemoryEstimate
    budget_gb: float  # of one card, for the serving process
    message: str | None = None  # will_not_fit's message, or the borderline warning
    param: str | None = None  # the field to change (will_not_fit only)

    def metadata(self) -> dict[str, Any]:
        """The `memory_estimate` event's metadata of an accepted deployment."""
        found = self.estimate
        out = {
            "estimate_gb": found.total_gb,
            "gpu_type": found.gpu_type,
            "gpu_memory_gb": found.gpu_memory_gb,
            "budget_gb": self.budget_gb,
            "verdict": found.verdict,
            "parts": found.parts,
        }
        return {**out, "message": self.message} if self.message else out


def assess_serving(
    config: dict | None,
    engine: str,
    gpu: dict,
    types: dict[str, int],
    batch: int,
    context: int,
    heads: int | None = None,
) -> ServeFit | None:
    """A deployment's per-GPU estimate against its GPU type's card (None: not checked, for the cpu
    pool, a type name without a size, or a config without what the estimate needs), and for one
    that will not fit the cheapest change that does: more GPUs of its type (for vLLM a count that
    divides the `heads`), else a card type of `types` (this box's, type -> count) with more memory,
    else which part dominates."""
    card = gpu_memory_gb(gpu["type"])
    found = serve_estimate(config or {}, engine, gpu["count"], batch, context)
    if card is None or found is None:
        return None
    budget = serve_budget_gb(engine, card)
    found.gpu_type, found.gpu_memory_gb = gpu["type"], card
    found.verdict = verdict(found.total_gb, budget)
    where = f"one {gpu['type']} has {card:g} GB" + (
        f" (vLLM takes {VLLM_MEMORY_UTILIZATION:.0%} of it: {budget:g} GB)" if budget != card else ""
    )
    shown = f"on {gpu['count']} GPU{'s' if gpu['count'] > 1 else ''} with {engine}"
    if found.verdict == "borderline":
        return ServeFit(
            estimate=found,
            budget_gb=budget,
            message=f"This deployment may run out of memory: it needs {describe(found)} {shown}; {where}.",
        )
    if found.verdict == "fits":
        return ServeFit(estimate=found, budget_gb=budget)
    fix = _serve_fix(config or {}, engine, gpu, types, batch, context, heads)
    if fix:
        what, param, fixed = fix
        advice = f"The cheapest change that fits: {what} (about {fixed.total_gb:g} GiB per GPU)."
    else:
        param = "model"
        part, size = max(found.parts.items(), key=lambda p: p[1])
        advice = (
            f"No GPU count or type this box has fits it; its {part.replace('_', ' ')} ({size:g} GiB per GPU) "
            "dominates: serve a smaller model, or on a box with larger GPUs."
        )
    message = f"This deployment needs {describe(found)} {shown}; {where}. {advice}"
    return ServeFit(estimate=found, budget_gb=budget, message=message, param=param)


def _serve_fix(
    config: dict, engine: str, gpu: dict, types: dict[str, int], batch: int, context: int, heads: int | None
) -> tuple[str, str, MemoryEstimate] | None:
    """(what to tell the user, the field, the estimate with it) of the first candidate that fits:
    more GPUs of the type, then larger cards of the box, smallest first, fewest GPUs first."""

    def counts(most: int, start: int) -> list[int]:
        return [n for n in range(start, most + 1) if engine != "vllm" or not heads or heads % n == 0]

    more = counts(types.get(gpu["type"], 0), gpu["count"] + 1)
    candidates = [(f"gpu_count {n}", "gpu.gpu_count", gpu["type"], n) for n in more]
    card = gpu_memory_gb(gpu["type"]) or 0
    larger = sorted((gpu_memory_gb(t) or 0, t) for t in types if (gpu_memory_gb(t) or 0) > card)
    for _, kind in larger:
        for n in counts(types[kind], 1):
            said = f"gpu_type {kind}" + (f" with gpu_count {n}" if n > 1 else "")
            candidates.append((said, "gpu.gpu_type", kind, n))
    for what, param, kind, n in candidates:
        found = serve_estimate(config, engine, n, batch, context)
        card_gb = gpu_memory_gb(kind)
        if found and card_gb and verdict(found.total_gb, serve_budget_gb(engine, card_gb)) == "fits":
            return what, param, found
    return None

"""Per-method hyperparameter schemas: bounds, defaults (the seed page's), and cross-field rules.

The resolved set, with every default filled in, is stored on the job and echoed back, so
a job's page shows exactly what the trainer will use.
"""

from __future__ import annotations

import functools
import importlib.util
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from . import health
from .errors import UNKNOWN_FIELD, bad_request, split_validation_error

Steps = Annotated[int, Meta(ge=1, le=100_000_000)]
Tokens = Annotated[int, Meta(ge=1, le=1_048_576)]
Seed = Annotated[int, Meta(ge=0, le=2**32 - 1)]
LearningRate = Annotated[float, Meta(gt=0, le=1)]
Rank = Annotated[int, Meta(ge=1, le=1024)]
Alpha = Annotated[float, Meta(gt=0, le=65536)]


class GrpoHyperparameters(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    learning_rate: Annotated[LearningRate, Meta(description="Optimizer step size (AdamW).")] = 1e-6
    num_epochs: Annotated[int, Meta(ge=1, le=10_000, description="Passes over the dataset's prompts.")] = 1
    max_steps: Annotated[
        Steps | None, Meta(description="Stop after this many optimizer steps (overrides num_epochs).")
    ] = None
    rollouts_per_prompt: Annotated[
        int, Meta(ge=2, le=1024, description="Completions sampled per prompt; rewards are compared within each group.")
    ] = 8
    kl_coef: Annotated[
        float, Meta(ge=0, le=1000, description="Weight of the KL penalty against the reference model (TRL's beta).")
    ] = 0.001
    max_prompt_length: Annotated[Tokens, Meta(description="Longest prompt in tokens; longer prompts fail the job.")] = (
        1024
    )
    max_response_length: Annotated[Tokens, Meta(description="Most tokens generated per completion.")] = 2048
    global_batch_size: Annotated[
        int, Meta(ge=2, le=1_048_576, description="Completions per optimizer step; a multiple of rollouts_per_prompt.")
    ] = 64
    seed: Annotated[Seed, Meta(description="Random seed for sampling and initialisation.")] = 42
    lora_rank: Annotated[Rank | None, Meta(description="LoRA rank; empty trains the full model.")] = None
    lora_alpha: Annotated[Alpha | None, Meta(description="LoRA scaling; defaults to 2 x lora_rank.")] = None
    lora_dropout: Annotated[float, Meta(ge=0, lt=1, description="Dropout on the LoRA layers.")] = 0.05
    load_in_4bit: Annotated[bool, Meta(description="Load the base model in 4-bit (QLoRA); needs lora_rank.")] = False
    system_prompt: Annotated[
        Annotated[str, Meta(max_length=100_000)] | None,
        Meta(description="Prepended as the system message to every prompt."),
    ] = None
    temperature: Annotated[float, Meta(gt=0, le=10, description="Sampling temperature for rollouts.")] = 1.0
    save_steps: Annotated[Steps | None, Meta(description="Save a checkpoint every this many steps.")] = None
    use_vllm: Annotated[bool, Meta(description="Generate rollouts with vLLM (needs vLLM installed).")] = False
    reward_timeout_s: Annotated[
        float,
        Meta(
            ge=1,
            le=86_400,
            description="Seconds one call of a reward function may take; past it the job fails "
            "(reward_function_error naming the function and the prompt).",
        ),
    ] = 300


class VideoHyperparameters(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    learning_rate: Annotated[LearningRate, Meta(description="Optimizer step size (AdamW).")] = 1e-3
    num_epochs: Annotated[int, Meta(ge=1, le=100_000, description="Passes over the clips.")] = 30
    max_steps: Annotated[
        Steps | None, Meta(description="Stop after this many optimizer steps (overrides num_epochs).")
    ] = None
    lora_rank: Annotated[Rank, Meta(description="LoRA rank on the transformer's attention projections.")] = 64
    lora_alpha: Annotated[Alpha | None, Meta(description="LoRA scaling; defaults to lora_rank.")] = None
    num_frames: Annotated[
        int, Meta(ge=1, le=1025, description="Frames sampled evenly from each clip; 8k+1 (e.g. 49).")
    ] = 49
    height: Annotated[
        int, Meta(ge=16, le=4096, multiple_of=16, description="Training height in pixels; a multiple of 16.")
    ] = 480
    width: Annotated[
        int, Meta(ge=16, le=4096, multiple_of=16, description="Training width in pixels; a multiple of 16.")
    ] = 720
    batch_size: Annotated[int, Meta(ge=1, le=1024, description="Clips per forward pass.")] = 1
    gradient_accumulation_steps: Annotated[
        int, Meta(ge=1, le=1024, description="Forward passes per optimizer step.")
    ] = 1
    validation_prompts: Annotated[
        list[Annotated[str, Meta(min_length=1, max_length=2000)]],
        Meta(max_length=16, description="Prompts rendered as validation videos."),
    ] = []
    validation_steps: Annotated[
        Steps | None, Meta(description="Render validation videos every this many steps (and always at the end).")
    ] = None
    save_steps: Annotated[Steps | None, Meta(description="Save a checkpoint every this many steps.")] = None
    seed: Annotated[Seed, Meta(description="Random seed for noise, timesteps and validation videos.")] = 42


SCHEMAS: dict[str, type[msgspec.Struct]] = {
    "grpo": GrpoHyperparameters,
    "sft_video_gen": VideoHyperparameters,
}


@functools.cache
def describe(method: str) -> list[dict]:
    """Each hyperparameter of a method: its input kind, bounds, default and help, read from the
    schema the API validates with (the dashboard's form is built from this)."""
    schema = SCHEMAS[method]
    defaults = {f.name: f for f in msgspec.structs.fields(schema)}
    out = []
    for info in msgspec.inspect.type_info(schema).fields:
        field = defaults[info.name]
        default = field.default if field.default is not msgspec.NODEFAULT else field.default_factory()
        meta = info.type
        description = ""
        if isinstance(meta, msgspec.inspect.Metadata):
            description = (meta.extra_json_schema or {}).get("description", "")
            meta = meta.type
        nullable = False
        if isinstance(meta, msgspec.inspect.UnionType):
            kinds = [t for t in meta.types if not isinstance(t, msgspec.inspect.NoneType)]
            nullable = len(kinds) < len(meta.types)
            meta = kinds[0]
        if isinstance(meta, msgspec.inspect.Metadata):
            meta = meta.type
        kind = {
            msgspec.inspect.IntType: "int",
            msgspec.inspect.FloatType: "float",
            msgspec.inspect.BoolType: "bool",
            msgspec.inspect.StrType: "str",
            msgspec.inspect.ListType: "list",
        }.get(type(meta), "str")
        bounds = {k: getattr(meta, k, None) for k in ("ge", "gt", "le", "lt", "multiple_of")}
        rules = []
        for k, sign in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            if bounds[k] is not None:
                bound = bounds[k]
                rules.append(f"{sign} {bound:g}" if isinstance(bound, float) else f"{sign} {bound}")
        if bounds["multiple_of"]:
            rules.append(f"multiple of {bounds['multiple_of']}")
        if kind == "str" and getattr(meta, "max_length", None):
            rules.append(f"at most {meta.max_length} characters")
        out.append(
            {
                "name": info.name,
                "kind": kind,
                "nullable": nullable,
                "default": default,
                "help": description,
                "rules": ", ".join(rules),
                "min": bounds["ge"] if bounds["ge"] is not None else None,
                "max": bounds["le"] if bounds["le"] is not None else None,
                "step": "any" if kind == "float" else (bounds["multiple_of"] or 1),
            }
        )
    return out


def _param(err: msgspec.ValidationError) -> tuple[str, str]:
    """(message, param) with param under `hyperparameters`, as the API names it."""
    message, path = split_validation_error(err)
    return message, "hyperparameters" + (f".{path}" if path else "")


def resolve(method: str, given: dict[str, Any] | None) -> dict[str, Any]:
    """Validate `given` against the method's schema and return the full resolved set."""
    given = dict(given or {}) if isinstance(given, dict) else given
    # GRPO health thresholds are a nested object, kept out of the flat schema the job form is
    # built from; echoed resolved when given, else the defaults apply (veri_box/health.py).
    watch = given.pop("health", None) if method == "grpo" and isinstance(given, dict) else None
    try:
        hp = msgspec.convert(given or {}, type=SCHEMAS[method])
    except msgspec.ValidationError as err:
        message, param = _param(err)
        code = "unknown_field" if message.startswith(UNKNOWN_FIELD) else "invalid_hyperparameter"
        if code == "unknown_field":
            allowed = ", ".join(f.name for f in msgspec.structs.fields(SCHEMAS[method]))
            name = param.removeprefix("hyperparameters.")
            message = f"Unknown hyperparameter '{name}' for method {method}; known: {allowed}"
        else:
            message = f"Invalid {param}: {message[0].lower()}{message[1:]}"
        raise bad_request(code, f"{message}.", param) from None
    resolved = msgspec.to_builtins(hp)
    if watch is not None:
        resolved["health"] = health.resolve(watch)
    return (_check_grpo if method == "grpo" else _check_video)(resolved)


def _check_grpo(hp: dict[str, Any]) -> dict[str, Any]:
    if hp["global_batch_size"] % hp["rollouts_per_prompt"]:
        raise bad_request(
            "invalid_hyperparameter",
            f"global_batch_size ({hp['global_batch_size']}) counts completions per optimizer step and "
            f"must be a multiple of rollouts_per_prompt ({hp['rollouts_per_prompt']}).",
            "hyperparameters.global_batch_size",
        )
    if hp["load_in_4bit"] and hp["lora_rank"] is None:
        raise bad_request(
            "invalid_hyperparameter",
            "load_in_4bit trains a LoRA on a 4-bit base model (QLoRA); set lora_rank too.",
            "hyperparameters.load_in_4bit",
        )
    if hp["lora_rank"] is None:
        if hp["lora_alpha"] is not None:
            raise bad_request(
                "invalid_hyperparameter",
                "lora_alpha only applies to LoRA training; set lora_rank too.",
                "hyperparameters.lora_alpha",
            )
    elif hp["lora_alpha"] is None:
        hp["lora_alpha"] = 2 * hp["lora_rank"]
    if hp["use_vllm"] and importlib.util.find_spec("vllm") is None:
        raise bad_request(
            "vllm_unavailable",
            "use_vllm needs vLLM installed on this box (./install.sh --vllm, on a GPU machine); "
            "leave use_vllm false to generate with transformers.",
            "hyperparameters.use_vllm",
        )
    return hp


def _check_video(hp: dict[str, Any]) -> dict[str, Any]:
    if (hp["num_frames"] - 1) % 8:
        lower = (hp["num_frames"] - 1) // 8 * 8 + 1
        raise bad_request(
            "invalid_hyperparameter",
            f"num_frames must be 8k+1 for CogVideoX's VAE (e.g. 9, 17, 49); "
            f"{hp['num_frames']} is not; try {lower} or {lower + 8}.",
            "hyperparameters.num_frames",
        )
    if hp["lora_alpha"] is None:
        hp["lora_alpha"] = hp["lora_rank"]
    return hp

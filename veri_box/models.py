"""The models this box can train: `base_model` resolved at submit as the trainer will resolve it
(trainers/models.py: a built-in, a local directory, the Hugging Face cache), read from its config
files only (never torch), and `GET /v1/models`.

What a model is comes from its files: `config.json` (a transformers model: its architectures
and shape) or a diffusers `model_index.json` (a pipeline: its class, and for CogVideoX the
transformer's and text encoder's configs). Parameter counts come from the safetensors headers
when the weights are there, else from the config's arithmetic, so a config-only folder still
gets a memory estimate.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Annotated, Any

import litestar
import msgspec
from litestar import Controller
from litestar.di import NamedDependency
from msgspec import Meta

# trainers.models and trainers.tiny are stdlib-only at import: the one list of built-ins and the
# tiny model's shape, shared with the trainer that builds them.
from trainers.models import BUILT_IN
from trainers.tiny import MODEL_CONFIG as TINY_LM_CONFIG
from trainers.tiny import VOCAB_SIZE as TINY_LM_VOCAB

from . import paths
from .errors import bad_request
from .schemas import ListOf
from .settings import DEFAULT_TRAINERS, Settings
from .store import Store

METHODS = ("grpo", "sft_video_gen")
MARKERS = ("config.json", "model_index.json")
SUGGESTIONS = 3


class Model(msgspec.Struct, kw_only=True):
    """One model this box can train, as `GET /v1/models` lists it."""

    id: Annotated[str, Meta(description="What to send as base_model.")]
    source: Annotated[str, Meta(description="built_in, hf_cache or local.")]
    path: Annotated[str | None, Meta(description="Its folder on this machine; null for a built-in not built yet.")]
    architecture: Annotated[str | None, Meta(description="transformers architecture or diffusers pipeline class.")]
    parameters: Annotated[int | None, Meta(description="Parameters (all parts of a pipeline).")]
    size_bytes: Annotated[int | None, Meta(description="Size of its files on disk; null when not on disk yet.")]
    methods: Annotated[list[str], Meta(description="The training methods it fits.")]
    object: str = "model"


class Resolved(msgspec.Struct, kw_only=True):
    """A base_model found on this box: the listing's view plus the config the memory estimate
    reads (`config`: a causal LM's config.json, or for a pipeline its parts' configs)."""

    model: Model
    kind: str  # "causal_lm", "cogvideox", or "other"
    config: dict[str, Any]


# -- where models are --------------------------------------------------------------------------


def hf_cache_dir() -> Path:
    """The server's Hugging Face model cache, as the trainer's sandbox is given it
    (sandbox.Host: HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub), read at call
    time: huggingface_hub's constants are frozen at its import."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("HOME") or str(Path.home()), ".cache", "huggingface"
    )
    return Path(home).expanduser() / "hub"


def custom_trainer(settings: Settings, method: str) -> bool:
    """Whether a method runs a trainer module other than the box's own (`--trainers`). Such a
    trainer decides itself what base_model names (tests/fake_trainer.py reads its behaviour from
    it), so the box cannot check the model for it: the check is skipped, not guessed."""
    return settings.trainer_modules().get(method) != DEFAULT_TRAINERS.get(method)


def _snapshot(repo_id: str, cache: Path) -> Path | None:
    """The snapshot folder the trainer's `snapshot_download(local_files_only=True)` would
    return, or None; the same call, so the box and the trainer agree on what is cached."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=True, cache_dir=str(cache)))
    except Exception:  # noqa: BLE001 - an invalid id, no refs, no snapshot: all mean "not here"
        return None


def _cached_repo_ids(cache: Path) -> list[str]:
    if not cache.is_dir():
        return []
    ids = []
    for entry in sorted(cache.iterdir()):
        if entry.name.startswith("models--") and entry.is_dir():
            ids.append(entry.name.removeprefix("models--").replace("--", "/"))
    return ids


# -- reading a model's files -----------------------------------------------------------------------


def _json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _safetensors_parameters(folder: Path) -> int | None:
    """Parameters from the safetensors headers (8-byte length, then JSON of dtype and shape per
    tensor): exact, and without reading the weights."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for file in files:
        try:
            with file.open("rb") as f:
                (length,) = struct.unpack("<Q", f.read(8))
                if length > 100_000_000:
                    return None
                header = json.loads(f.read(length))
        except (OSError, ValueError, struct.error):
            return None
        for name, tensor in header.items():
            if name != "__metadata__" and isinstance(tensor, dict):
                count = 1
                for dim in tensor.get("shape", []):
                    count *= int(dim)
                total += count
    return total


def _size_on_disk(folder: Path) -> int:
    """Bytes of the folder's files, following the HF cache's symlinks into its blobs."""
    total = 0
    for root, _, names in os.walk(folder):
        for name in names:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def lm_parameters(config: dict) -> int:
    """A decoder-only transformer's parameters from its config.json: embeddings, the LM head
    unless tied, and per layer attention (with the q/k/v biases Qwen2 has), a gated MLP (times
    the experts of a mixture of experts) and two norms."""
    h, layers = config["hidden_size"], config["num_hidden_layers"]
    heads = config["num_attention_heads"]
    kv = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or h // heads
    vocab = config["vocab_size"]
    inter = config.get("intermediate_size") or 4 * h
    experts = config.get("num_experts") or config.get("num_local_experts") or 1
    if experts > 1:
        inter = config.get("moe_intermediate_size") or inter
    attention = h * heads * head_dim * 2 + h * kv * head_dim * 2
    if config.get("attention_bias") or config.get("model_type") == "qwen2":
        attention += heads * head_dim + 2 * kv * head_dim
    mlp = 3 * h * inter * experts + (h * experts if experts > 1 else 0)
    per_layer = attention + mlp + 2 * h
    head = 0 if config.get("tie_word_embeddings", True) else vocab * h
    return vocab * h + head + layers * per_layer + h


def cogvideox_transformer_parameters(config: dict) -> int:
    """CogVideoXTransformer3DModel's parameters from transformer/config.json: per block two
    adaptive norms (time embedding -> 6 x inner), attention (4 x inner^2) and a 4x GELU MLP."""
    inner = config["num_attention_heads"] * config["attention_head_dim"]
    temb = config.get("time_embed_dim", 512)
    block = 2 * (temb * 6 * inner + 6 * inner) + 4 * (inner * inner + inner) + 2 * 4 * inner * inner + 5 * inner
    patch = config.get("patch_size", 2)
    embed = config.get("in_channels", 16) * patch * patch * inner + config.get("text_embed_dim", 4096) * inner
    return config["num_layers"] * block + embed + inner * temb * 2


def t5_encoder_parameters(config: dict) -> int:
    d, layers = config["d_model"], config["num_layers"]
    inner = config.get("num_heads", 64) * config.get("d_kv", 64)
    gated = "gated" in config.get("feed_forward_proj", "gated-gelu")
    ff = (3 if gated else 2) * d * config["d_ff"]
    return config.get("vocab_size", 32128) * d + layers * (4 * d * inner + ff + 2 * d) + d


# The CogVideoX VAE (AutoencoderKLCogVideoX, block_out_channels 128-256-256-512): 215.6 M
# parameters; scaled by its widest block when the weights are not there to count.
COGVIDEOX_VAE_PARAMETERS = 215_588_000


def _vae_parameters(folder: Path, config: dict) -> int:
    counted = _safetensors_parameters(folder)
    if counted:
        return counted
    widest = max(config.get("block_out_channels") or [512])
    return int(COGVIDEOX_VAE_PARAMETERS * (widest / 512) ** 2)


def _part(folder: Path, name: str) -> tuple[dict, int | None]:
    config = _json(folder / name / "config.json") or {}
    return config, _safetensors_parameters(folder / name)


def read(model_id: str, source: str, folder: Path | None) -> Resolved:
    """What the files in `folder` say the model is. A folder without a config this box can
    read is kind "other": listed, and fitting no method."""
    if folder is None:
        return _unbuilt(model_id)
    if (folder / "model_index.json").is_file():
        index = _json(folder / "model_index.json") or {}
        pipeline = str(index.get("_class_name") or "diffusers pipeline")
        transformer, t_params = _part(folder, "transformer")
        text_encoder, e_params = _part(folder, "text_encoder")
        vae, _ = _part(folder, "vae")
        kind = "cogvideox" if pipeline == "CogVideoXPipeline" and transformer else "other"
        parameters = None
        if kind == "cogvideox":
            t_params = t_params or cogvideox_transformer_parameters(transformer)
            e_params = e_params or (t5_encoder_parameters(text_encoder) if text_encoder else 0)
            v_params = _vae_parameters(folder / "vae", vae)
            parameters = t_params + e_params + v_params
            config = {
                "transformer": transformer,
                "transformer_parameters": t_params,
                "text_encoder_parameters": e_params,
                "vae_parameters": v_params,
            }
        else:
            config = {}
        return _resolved(model_id, source, folder, pipeline, parameters, kind, config)
    config = _json(folder / "config.json")
    if config is None:
        return _resolved(model_id, source, folder, None, None, "other", {})
    architectures = config.get("architectures") or []
    architecture = str(architectures[0]) if architectures else config.get("model_type")
    causal = any(str(a).endswith(("ForCausalLM", "LMHeadModel")) for a in architectures)
    kind = "causal_lm" if causal else "other"
    parameters = _safetensors_parameters(folder)
    if parameters is None and causal:
        try:
            parameters = lm_parameters(config)
        except (KeyError, TypeError, ZeroDivisionError):
            parameters = None
    return _resolved(model_id, source, folder, architecture, parameters, kind, {**config, "parameters": parameters})


def _resolved(
    model_id: str, source: str, folder: Path, architecture: str | None, parameters: int | None, kind: str, config: dict
) -> Resolved:
    methods = {"causal_lm": ["grpo"], "cogvideox": ["sft_video_gen"]}.get(kind, [])
    model = Model(
        id=model_id,
        source=source,
        path=str(folder),
        architecture=architecture,
        parameters=parameters,
        size_bytes=_size_on_disk(folder),
        methods=methods,
    )
    return Resolved(model=model, kind=kind, config=config)


def _tiny_lm_config() -> dict:
    return {
        **TINY_LM_CONFIG,
        "vocab_size": TINY_LM_VOCAB,
        "model_type": "qwen2",
        "architectures": ["Qwen2ForCausalLM"],
    }


def _unbuilt(model_id: str) -> Resolved:
    """A built-in model before its first job builds it: known by its recipe."""
    if model_id == "veri-box/tiny-lm":
        config = _tiny_lm_config()
        parameters = lm_parameters(config)
        model = Model(
            id=model_id,
            source="built_in",
            path=None,
            architecture="Qwen2ForCausalLM",
            parameters=parameters,
            size_bytes=None,
            methods=["grpo"],
        )
        return Resolved(model=model, kind="causal_lm", config={**config, "parameters": parameters})
    model = Model(
        id=model_id,
        source="built_in",
        path=None,
        architecture="CogVideoXPipeline",
        parameters=None,
        size_bytes=None,
        methods=["sft_video_gen"],
    )
    return Resolved(model=model, kind="cogvideox", config={})  # tiny: its memory is negligible


# -- resolution at submit ----------------------------------------------------------------------------


def _built_in_folder(model_id: str, settings: Settings) -> Path | None:
    marker = BUILT_IN[model_id][2]
    folder = paths.models_dir(settings.data_dir) / model_id.split("/", 1)[1]
    return folder if (folder / marker).is_file() else None


def find(base_model: str, settings: Settings) -> Resolved | None:
    """The model `base_model` names, found where the trainer will look, in the trainer's order."""
    name = base_model.strip()
    if name in BUILT_IN:
        return read(name, "built_in", _built_in_folder(name, settings))
    local = Path(name).expanduser()
    if local.is_dir():
        return read(name, "local", local)
    if name.startswith(("/", "~", ".")):
        return None  # a path that is not there; not an id the Hub could have
    snapshot = _snapshot(name, hf_cache_dir())
    return read(name, "hf_cache", snapshot) if snapshot else None


def check(base_model: str, method: str, settings: Settings, store: Store) -> Resolved | None:
    """The model a job will train, or 400 `model_not_found` / `model_incompatible`. None when
    the method runs a custom trainer (see custom_trainer)."""
    if custom_trainer(settings, method):
        return None
    found = find(base_model, settings)
    if found is None:
        raise bad_request("model_not_found", not_found_message(base_model.strip(), settings, store), "base_model")
    if method not in found.model.methods:
        raise bad_request("model_incompatible", _incompatible_message(found, method), "base_model")
    return found


def _incompatible_message(found: Resolved, method: str) -> str:
    what = found.model.architecture or "a folder without a model config this box can read"
    need = {
        "grpo": "a causal language model (config.json with a ...ForCausalLM architecture)",
        "sft_video_gen": "a CogVideoX pipeline (model_index.json of a CogVideoXPipeline, e.g. THUDM/CogVideoX-2b)",
    }[method]
    fits = f"; it fits method {' or '.join(found.model.methods)}" if found.model.methods else ""
    return f"Model '{found.model.id}' is {what}{fits}; {method} trains {need}."


def not_found_message(name: str, settings: Settings, store: Store) -> str:
    close = closest(name, [m.id for m in list_models(settings, store)])
    cache = hf_cache_dir()
    looked = (
        f"the built-in models ({', '.join(BUILT_IN)}), a directory '{Path(name).expanduser()}' (none there) "
        f"and the Hugging Face cache ({cache})"
    )
    suggestion = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    if name.lower().startswith("veri-box/"):
        # That namespace is the box's own: no Hub download can supply another model in it.
        built_in = ", ".join(BUILT_IN)
        return f"Model '{name}' isn't on this box: 'veri-box/' names only its built-in models ({built_in}).{suggestion}"
    how = (
        f" To train it, put it in this box's cache first: on a machine with the Hub, `hf download {name} "
        f"--cache-dir {cache}` (or `huggingface-cli download {name} --cache-dir {cache}`), copied here if this "
        "box is offline; or send the path of a local model folder."
    )
    return f"Model '{name}' is not on this box; looked in {looked}.{suggestion}{how}"


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insert, delete, substitute), case-insensitive."""
    a, b = a.lower(), b.lower()
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def closest(name: str, candidates: list[str]) -> list[str]:
    """Up to SUGGESTIONS names near `name`: within a third of its length (at least 2 edits), or
    the same name under another owner (`Qwen3-0.6B` for `Qwen/Qwen3-0.6B`)."""
    scored = []
    short = name.rsplit("/", 1)[-1].lower()
    for candidate in dict.fromkeys(candidates):
        distance = edit_distance(name, candidate)
        if distance <= max(2, len(name) // 3) or candidate.rsplit("/", 1)[-1].lower() == short:
            scored.append((distance, candidate))
    return [c for _, c in sorted(scored)[:SUGGESTIONS]]


# -- listing ----------------------------------------------------------------------------------------


def list_models(settings: Settings, store: Store) -> list[Model]:
    """Built-ins (always, built or not), every model in the HF cache, and the local model
    folders jobs on this box have named (that are still there), in that order."""
    out = [read(name, "built_in", _built_in_folder(name, settings)).model for name in BUILT_IN]
    cache = hf_cache_dir()
    for repo_id in _cached_repo_ids(cache):
        snapshot = _snapshot(repo_id, cache)
        if snapshot is not None:
            out.append(read(repo_id, "hf_cache", snapshot).model)
    for name in store.recent_base_models(100):
        if name in BUILT_IN or not name.startswith(("/", "~", ".")):
            continue
        folder = Path(name).expanduser()
        if folder.is_dir() and any((folder / m).is_file() for m in MARKERS):
            out.append(read(name, "local", folder).model)
    return out


class ModelController(Controller):
    path = "/v1/models"
    tags = ["models"]

    @litestar.get("/", sync_to_thread=True)
    def list_(self, store: NamedDependency[Store], settings: NamedDependency[Settings]) -> ListOf[Model]:
        return ListOf(data=list_models(settings, store), has_more=False)

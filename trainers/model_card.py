"""The model card (README.md) every output folder carries, and the portable names in it.

A trainer's output (the LoRA adapter, a full model, a video LoRA) and a merged model each get a
README.md saying what they are: base model, method, dataset and reward functions, the resolved
hyperparameters, the final metrics, and how to load the folder (PEFT / transformers /
diffusers). `portable` rewrites `adapter_config.json` so its `base_model_name_or_path` is the
model as the user named it (`Qwen/Qwen3-0.6B`), not the snapshot folder of this box's Hugging
Face cache the trainer loaded it from: an adapter pushed to the Hub or copied to a laptop then
finds its base by id.

Standard library only: the server imports `load_snippet` too, so the job page, `veri-box demo`
and the card show one snippet, from one function.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

CARD_FILE = "README.md"
ADAPTER_CONFIG = "adapter_config.json"
PROGRESS_FILE = "progress.jsonl"  # trainers.progress.PROGRESS_FILE, named here to stay stdlib-light
# What a folder holds: "adapter" (PEFT LoRA of a language model), "model" (a full fine-tune),
# "merged" (base model with the LoRA merged in), "video_lora" (a diffusers LoRA of CogVideoX).
KINDS = ("adapter", "model", "merged", "video_lora")
PLACEHOLDER = "path/to/model"  # where the user unpacked model.tar.gz, or the Hub repo they pushed to
BUILT_IN_PREFIX = "veri-box/"  # built-in tiny models: not on the Hub
METRICS_SHOWN = 40
# The final metrics a reader looks for first; the rest (timings, clip ratios, token counts) stay
# in the box's metrics and the TensorBoard files.
HEADLINE = ("reward", "reward_std", "loss", "kl", "entropy", "grad_norm", "completions/mean_length", "learning_rate")


def output_kind(method: str, lora_rank: Any) -> str:
    """What a job's output folder holds."""
    if method == "sft_video_gen":
        return "video_lora"
    return "adapter" if lora_rank else "model"


def _q(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)  # a Python string literal for any name


def load_snippet(kind: str, base_model: str, location: str = PLACEHOLDER) -> str:
    """Python that loads an output folder (or Hub repo) `location` of `kind`."""
    if kind == "adapter":
        return (
            "from peft import PeftModel\n"
            "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
            f"base = AutoModelForCausalLM.from_pretrained({_q(base_model)})\n"
            f"model = PeftModel.from_pretrained(base, {_q(location)})\n"
            f"tokenizer = AutoTokenizer.from_pretrained({_q(location)})\n"
            "# or, the base found from adapter_config.json:\n"
            "# from peft import AutoPeftModelForCausalLM\n"
            f"# model = AutoPeftModelForCausalLM.from_pretrained({_q(location)})\n"
        )
    if kind in ("model", "merged"):
        return (
            "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
            f"model = AutoModelForCausalLM.from_pretrained({_q(location)})\n"
            f"tokenizer = AutoTokenizer.from_pretrained({_q(location)})\n"
        )
    if kind == "video_lora":
        return (
            "import torch\n"
            "from diffusers import CogVideoXPipeline\n\n"
            f"pipe = CogVideoXPipeline.from_pretrained({_q(base_model)}, torch_dtype=torch.bfloat16)\n"
            f"pipe.load_lora_weights({_q(location)})\n"
        )
    raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")


def portable(folder: str | Path, base_model: str) -> None:
    """adapter_config.json names the base model as the job did (the Hub id), not the local folder
    it was loaded from. Rewritten whole through a temporary file."""
    path = Path(folder) / ADAPTER_CONFIG
    if not path.is_file():
        return
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("base_model_name_or_path") == base_model:
        return
    data["base_model_name_or_path"] = base_model
    tmp = path.with_name(ADAPTER_CONFIG + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def final_metrics(job_dir: str | Path) -> tuple[int | None, dict[str, float]]:
    """(last step, each metric's last value) from the job's progress.jsonl."""
    step, values = None, {}
    try:
        with open(Path(job_dir) / PROGRESS_FILE, encoding="utf-8") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue  # a line cut short
                if record.get("type") == "metrics" and isinstance(record.get("values"), dict):
                    step = record.get("step", step)
                    values.update(record["values"])
    except OSError:
        pass
    return step, values


def _value(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.6g}"
    # A line break would end the Markdown table (a multi-line system_prompt): <br> keeps the cell.
    return str(value).replace("|", "\\|").replace("\r\n", "<br>").replace("\n", "<br>")


def card(config: Any, kind: str, step: int | None, metrics: dict[str, float]) -> str:
    """The README.md text for an output of the job `config` (a trainers.contract.JobConfig)."""
    # A base loaded from a folder on the box is named by the folder's name only: its absolute
    # path means nothing elsewhere (and would travel to the Hub), and the Hub's metadata wants an id.
    local = os.path.isabs(config.base_model)
    base = Path(config.base_model).name if local else config.base_model
    hp = dict(config.hyperparameters)
    lora = kind in ("adapter", "merged", "video_lora")
    library = {"adapter": "peft", "video_lora": "diffusers"}.get(kind, "transformers")
    what = {
        "adapter": "a LoRA adapter (PEFT)",
        "model": "a fully fine-tuned model",
        "merged": "the base model with the LoRA adapter merged into its weights",
        "video_lora": "a LoRA for the CogVideoX transformer (diffusers)",
    }[kind]
    method = {"grpo": "GRPO (TRL)", "sft_video_gen": "supervised video-generation LoRA"}.get(
        config.method, config.method
    )
    tags = ["veri-box", config.method, *(["lora"] if lora else [])]
    front = [
        "---",
        *([] if local else [f"base_model: {_q(base)}"]),
        f"library_name: {library}",
        f"pipeline_tag: {'text-to-video' if kind == 'video_lora' else 'text-generation'}",
        "tags:",
        *(f"- {t}" for t in tags),
        "---",
        "",
    ]
    lines = [*front, f"# {config.output_name or config.job_id}", ""]
    lines += [f"This folder holds {what}, trained by veri-box (job `{config.job_id}`).", ""]
    lines += ["## Base model", "", f"`{base}`" + (" (a model folder on the box that trained it)" if local else ""), ""]
    if base.startswith(BUILT_IN_PREFIX):
        lines += [
            "A built-in tiny model of veri-box (random weights, for demos and tests); it is not on the "
            "Hugging Face Hub: load it from the box's `models/` folder.",
            "",
        ]
    if kind == "merged" and hp.get("load_in_4bit"):
        lines += ["The adapter was trained on the 4-bit (QLoRA) base and merged into its full-precision weights.", ""]
    lines += ["## Training", "", f"- Method: {method}"]
    dataset = config.dataset
    named = f"{dataset.name} (`{dataset.id}`)" if dataset.name else f"`{dataset.id}`"
    lines.append(f"- Dataset: {named}, {dataset.format}, {dataset.num_rows} rows")
    if config.reward_functions:
        names = ", ".join(
            f"`{r.name}`" + (f" × {r.weight:g}" if r.weight != 1 else "") for r in config.reward_functions
        )
        lines.append(f"- Reward functions: {names}")
    if config.environments:
        lines.append(f"- Environments: {', '.join(f'`{e}`' for e in config.environments)}")
    lines += ["", "### Hyperparameters", "", "| name | value |", "| --- | --- |"]
    lines += [f"| `{k}` | {_value(v)} |" for k, v in sorted(hp.items())]
    lines += ["", "## Final metrics", ""]
    if metrics:
        lines += [f"At step {step}:" if step is not None else "Last logged:", "", "| metric | value |", "| --- | --- |"]
        headline = [k for k in metrics if k in HEADLINE or (k.startswith("rewards/") and k.endswith("/mean"))]
        shown = sorted((k, metrics[k]) for k in (headline or metrics))[:METRICS_SHOWN]
        lines += [f"| `{k}` | {_value(v)} |" for k, v in shown]
    else:
        lines.append("No metrics were logged.")
    lines += ["", "## How to load", "", f"With `{PLACEHOLDER}` this folder (or the Hub repo it was pushed to):", ""]
    lines += ["```python", load_snippet(kind, base).rstrip("\n"), "```", ""]
    return "\n".join(lines)


def write(folder: str | Path, config: Any, kind: str, job_dir: str | Path | None = None) -> Path:
    """README.md in `folder` for an output of the job `config`, metrics from its progress.jsonl
    (in `job_dir`, by default the config's)."""
    step, metrics = final_metrics(job_dir or config.job_dir)
    path = Path(folder) / CARD_FILE
    path.write_text(card(config, kind, step, metrics), encoding="utf-8")
    return path


def finish(folder: str | Path, config: Any, kind: str) -> None:
    """What every trainer does to its output once saved: portable names, then the card."""
    portable(folder, config.base_model)
    write(folder, config, kind)

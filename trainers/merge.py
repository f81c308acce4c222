"""Merge a completed LoRA GRPO job's adapter into its base model: `python -m trainers.merge WORK_DIR`.

WORK_DIR/merge.json in: {"job_dir", "adapter", "models_dir"} (paths on this machine: a job that
trained on a rented instance has its config's paths from there); the job's own config.json says
the base model and what the card tells; WORK_DIR/model/ out: safetensors, config, generation
config, the tokenizer the job trained with, and a model card, loadable with
`AutoModelForCausalLM.from_pretrained`. A failure is WORK_DIR/error.json ({code, message}) and
exit code 1; the server (veri_box/merges.py) moves WORK_DIR/model into place only on success.

The server runs it on CPU, in the trainers' sandbox (the job directory read-only, WORK_DIR
writable): a merge is one addition per adapted matrix, so the cost is holding the base model
in memory once, in the dtype it is stored in, which needs no GPU and must not wait for one.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from trainers import model_card, models
from trainers.contract import read_config
from trainers.errors import TrainerError
from trainers.progress import log

SPEC_FILE = "merge.json"
ERROR_FILE = "error.json"
MODEL_DIR = "model"


def merge(job_dir: Path, adapter: Path, models_dir: str, target: Path) -> None:
    import transformers
    from peft import PeftModel

    config = read_config(job_dir)
    if not (adapter / model_card.ADAPTER_CONFIG).is_file():
        raise TrainerError(
            "merge_failed", f"Job {config.job_id} left no LoRA adapter ({adapter} has no adapter_config.json)."
        )
    base_path = models.resolve(config.base_model, models_dir)
    log(f"merging the LoRA of job {config.job_id} into {config.base_model} (from {base_path}) on CPU")
    try:
        # The dtype the base is stored in: a bf16 model stays bf16 (half the memory of fp32).
        # A QLoRA job's base is loaded unquantized: the merged model is full precision.
        base = transformers.AutoModelForCausalLM.from_pretrained(base_path, dtype="auto")
    except (OSError, ValueError) as err:
        raise TrainerError("model_not_found", f"Could not load the base model from {base_path}: {err}") from None
    model = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    # The merged model names its base as the job did, not this box's snapshot folder.
    model.config._name_or_path = config.base_model
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(target), safe_serialization=True)
    tokenizer_source = adapter if (adapter / "tokenizer_config.json").is_file() else Path(base_path)
    transformers.AutoTokenizer.from_pretrained(str(tokenizer_source)).save_pretrained(str(target))
    model_card.write(target, config, "merged", job_dir)
    size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    log(f"saved the merged model to {target} ({size / 2**20:.1f} MiB)")


def main(work_dir: str) -> int:
    work = Path(work_dir)
    try:
        spec = json.loads((work / SPEC_FILE).read_text(encoding="utf-8"))
        merge(Path(spec["job_dir"]), Path(spec["adapter"]), spec["models_dir"], work / MODEL_DIR)
    except TrainerError as err:
        log(f"error ({err.code}): {err.message}")
        (work / ERROR_FILE).write_text(json.dumps({"code": err.code, "message": err.message}), encoding="utf-8")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

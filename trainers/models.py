"""Finding the base model on this machine: a local directory, the Hugging Face cache, or one of
the built-in tiny models, never a download at run time (the runner also sets HF_HUB_OFFLINE=1).

The built-in models (`veri-box/tiny-lm`, `veri-box/tiny-cogvideox`) are built here, in the
trainer, the first time a job names them, into the box's models folder: the demo and first jobs
need no model on the machine, and the server never spawns a process to make one.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from trainers.errors import TrainerError
from trainers.progress import log

BUILT_IN = {
    "veri-box/tiny-lm": ("trainers.tiny", "build_tiny_lm", "config.json"),
    "veri-box/tiny-cogvideox": ("trainers.tiny_video", "build_tiny_video_pipeline", "model_index.json"),
}


def resolve(base_model: str, models_dir: str | Path | None = None) -> str:
    """A directory holding the model's files, or TrainerError `model_not_found` saying where
    we looked."""
    if base_model in BUILT_IN and models_dir:
        return str(built_in(base_model, Path(models_dir)))
    local = Path(base_model).expanduser()
    if local.is_dir():
        return str(local)
    from huggingface_hub import constants, snapshot_download

    try:
        return snapshot_download(base_model, local_files_only=True)
    except Exception:  # noqa: BLE001 - any failure means "not here"; the message says what to do
        raise TrainerError(
            "model_not_found",
            f"Model '{base_model}' is neither a directory on this machine nor in the Hugging Face cache "
            f"({constants.HF_HUB_CACHE}). Download it on the box first (e.g. `hf download {base_model}`) "
            "or pass the path of a local model directory as base_model.",
        ) from None


def built_in(name: str, models_dir: Path) -> Path:
    """The built-in model's folder, built on first use. In the sandbox only that folder of the
    models folder is writable, so the model is built inside it and its files moved into place,
    the marker file last (a half-built folder is never taken for a model). Two jobs may build it
    at once: a lock on the folder lets one build and the other wait and reuse it."""
    import fcntl
    import importlib

    module, function, marker = BUILT_IN[name]
    target = models_dir / name.split("/", 1)[1]
    if (target / marker).is_file():
        return target
    target.mkdir(parents=True, exist_ok=True)
    with open(target / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / marker).is_file():  # built by the job that held the lock
            return target
        log(f"building the built-in model {name} in {target}")
        tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=target))
        try:
            getattr(importlib.import_module(module), function)(tmp / "model")
            entries = sorted((tmp / "model").iterdir(), key=lambda p: p.name == marker)
            for entry in entries:
                entry.replace(target / entry.name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target

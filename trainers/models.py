"""Finding the base model on this machine: a local directory or the Hugging Face cache, never
a download at run time (the runner also sets HF_HUB_OFFLINE=1)."""

from __future__ import annotations

from pathlib import Path

from trainers.errors import TrainerError


def resolve(base_model: str) -> str:
    """A directory holding the model's files, or TrainerError `model_not_found` saying where
    we looked."""
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

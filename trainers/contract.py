"""config.json, the whole of what the server tells a trainer: the contract between the two.

The server builds a `JobConfig` and writes it into the job directory with `write_config` before
it starts `python -m trainers.<method> JOB_DIR`; the trainer reads it back with `read_config`
(through `trainers.progress.load_config`). Nothing else passes from server to trainer.

Reading ignores keys it does not know, so a newer server's additions do not break an older
trainer, and a key it needs but does not find is a `ConfigError` naming it. `hyperparameters`
and `environments` stay plain dicts: they differ per method, and the server has validated them.

Standard library only: the server imports this module and must not load the training stack, and
every trainer process imports it first thing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any

CONFIG_FILE = "config.json"


class ConfigError(ValueError):
    """config.json does not hold what this trainer needs."""


def _part(cls: type, data: Any, where: str) -> Any:
    """One part of config.json (a dataset, a reward function, ...) read as its dataclass."""
    return cls(**_values(cls, data, where))


def _values(cls: type, data: Any, where: str) -> dict[str, Any]:
    """The values of cls's fields in the JSON object `data` (at `where` in config.json)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{CONFIG_FILE}: {where or 'the file'} must be a JSON object, not {type(data).__name__}")
    prefix = f"{where}." if where else ""
    required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
    missing = [name for name in required if name not in data]
    if missing:
        names = ", ".join(prefix + name for name in missing)
        raise ConfigError(f"{CONFIG_FILE} is missing {names} (was it written by an older server?)")
    return {f.name: data[f.name] for f in fields(cls) if f.name in data}


@dataclass(frozen=True)
class DatasetConfig:
    id: str
    format: str
    columns: list[str]
    num_rows: int
    path: str  # absolute: a file, or a folder for video datasets
    name: str = ""  # as uploaded: the model card names the dataset by it


@dataclass(frozen=True)
class RewardFunctionConfig:
    id: str
    name: str
    entrypoint: str
    path: str  # the job's own copy of the uploaded file
    weight: float


@dataclass(frozen=True)
class OpenRewardConfig:
    api_key: str
    base_url: str
    session_url: str
    api_url: str


@dataclass(frozen=True)
class WandbConfig:
    """The box's W&B integration, set when it has one (trainers/trackers.py)."""

    api_key: str
    project: str
    entity: str | None = None
    base_url: str | None = None  # a self-hosted W&B server; None is W&B's cloud
    mode: str = "online"  # or "offline": the run stays in JOB_DIR/wandb/ until `wandb sync`


@dataclass(frozen=True)
class Devices:
    type: str  # "cpu" or a GPU type
    count: int
    indices: list[int]


@dataclass(frozen=True)
class JobConfig:
    job_id: str
    method: str
    trainer: str | None  # the module the server runs, e.g. "trainers.grpo"
    base_model: str
    output_name: str
    dataset: DatasetConfig
    reward_functions: list[RewardFunctionConfig]
    environments: dict[str, Any] | None  # {name: {"splits": [...]}} for OpenReward jobs
    openreward: OpenRewardConfig | None  # set when the job has environments
    hyperparameters: dict[str, Any]  # the method's, every default filled in
    seed: int | None
    devices: Devices
    job_dir: str
    output_dir: str
    models_dir: str  # where the built-in tiny models are built
    checkpoints_dir: str
    # A checkpoint to start from (weights, optimizer, scheduler, step, RNG): a copy inside this
    # job's own directory, since the sandbox shows a trainer no other job's files. None (the
    # default, also for config.json files of servers before resume) starts from base_model.
    resume_from: str | None = None
    # W&B, when the box has the integration: every job logs to it (trainers/trackers.py).
    wandb: WandbConfig | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobConfig:
        values = _values(cls, data, "")
        entries = values["reward_functions"]
        if not isinstance(entries, list):
            raise ConfigError(f"{CONFIG_FILE}: reward_functions must be a list, not {type(entries).__name__}")
        openreward = values["openreward"]
        wandb = values.get("wandb")
        return cls(
            **{
                **values,
                "dataset": _part(DatasetConfig, values["dataset"], "dataset"),
                "reward_functions": [
                    _part(RewardFunctionConfig, entry, f"reward_functions[{i}]") for i, entry in enumerate(entries)
                ],
                "openreward": None if openreward is None else _part(OpenRewardConfig, openreward, "openreward"),
                "devices": _part(Devices, values["devices"], "devices"),
                "wandb": None if wandb is None else _part(WandbConfig, wandb, "wandb"),
            }
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def write_config(job_dir: str | Path, config: JobConfig) -> Path:
    """JOB_DIR/config.json, replaced whole so a reader never sees half of it."""
    path = Path(job_dir) / CONFIG_FILE
    tmp = path.with_name(CONFIG_FILE + ".tmp")
    tmp.write_text(json.dumps(config.to_dict(), indent=2), encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_config(job_dir: str | Path) -> JobConfig:
    with open(Path(job_dir) / CONFIG_FILE, encoding="utf-8") as f:
        return JobConfig.from_dict(json.load(f))

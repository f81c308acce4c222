"""The config a trainer reads (JOB_DIR/config.json): the fully resolved job, built by one pure
function from the stored rows, so a trainer needs nothing but that file."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from trainers.contract import DatasetConfig, Devices, JobConfig, OpenRewardConfig, RewardFunctionConfig, WandbConfig

from . import openreward, paths

RESUME_DIR = "resume"


def reward_function_copy(data_dir: Path, job_id: str, rf_id: str) -> Path:
    """Where the job keeps its own copy of a reward function (the original may be deleted
    once the job has ended)."""
    return paths.job_reward_functions_dir(data_dir, job_id) / f"{rf_id}.py"


def resume_copy(data_dir: Path, job_id: str, checkpoint: dict) -> Path:
    """Where the job keeps its own copy of the checkpoint it resumes from: the sandbox shows a
    trainer its own job directory only, never the source job's. The folder keeps its name
    (checkpoint-N), which TRL reads the step from."""
    return paths.job_dir(data_dir, job_id) / RESUME_DIR / PurePosixPath(checkpoint["path"]).name


def resume_source(data_dir: Path, checkpoint: dict) -> Path:
    """The checkpoint's folder inside the job that saved it."""
    return paths.job_dir(data_dir, checkpoint["job_id"]) / checkpoint["path"]


def _openreward(integration: dict) -> OpenRewardConfig:
    """The key and the service's URLs resolved here, once, so the trainer talks to exactly the
    service the submit-time check asked."""
    ends = openreward.endpoints(integration["base_url"])
    return OpenRewardConfig(
        api_key=integration["api_key"],
        base_url=integration["base_url"],
        session_url=ends.session_url,
        api_url=ends.api_url,
    )


def _wandb(integration: dict) -> WandbConfig:
    """The W&B key travels as OpenReward's does: in config.json, which only the job's own
    sandbox can read (the server never hands out a link to it). integrations.put_wandb always
    stores a project and a mode."""
    options = integration["options"] or {}
    return WandbConfig(
        api_key=integration["api_key"],
        project=options["project"],
        entity=options.get("entity"),
        base_url=integration["base_url"],
        mode=options.get("mode", "online"),
    )


def build(
    job: dict,
    dataset: dict,
    reward_functions: list[dict],
    integration: dict | None,
    data_dir: Path,
    trainer: str | None,
    indices: list[int],
    checkpoint: dict | None = None,
    wandb: dict | None = None,
) -> JobConfig:
    """`reward_functions` are the stored rows of the job's reward functions in the job's order,
    each with its `weight`; `integration` is the OpenReward row for jobs with environments;
    `checkpoint` the row of the checkpoint a resumed job starts from; `wandb` the W&B integration
    row when the box has one: every job then logs to it."""
    job_dir = paths.job_dir(data_dir, job["id"])
    return JobConfig(
        job_id=job["id"],
        method=job["method"],
        trainer=trainer,
        base_model=job["base_model"],
        output_name=job["output_name"],
        dataset=DatasetConfig(
            id=dataset["id"],
            format=dataset["format"],
            columns=dataset["columns"],
            num_rows=dataset["num_rows"],
            path=str(paths.dataset_dir(data_dir, dataset["id"]) / dataset["path"]),
            name=dataset["name"],
        ),
        reward_functions=[
            RewardFunctionConfig(
                id=rf["id"],
                name=rf["name"],
                entrypoint=rf["entrypoint"],
                path=str(reward_function_copy(data_dir, job["id"], rf["id"])),
                weight=rf["weight"],
            )
            for rf in reward_functions
        ],
        environments=job["environments"],
        openreward=_openreward(integration) if job["environments"] and integration else None,
        hyperparameters=job["hyperparameters"],
        seed=job["hyperparameters"].get("seed"),
        devices=Devices(type=job["gpu_requested"]["type"], count=len(indices), indices=indices),
        job_dir=str(job_dir),
        output_dir=str(paths.output_dir(data_dir, job["id"])),
        models_dir=str(paths.models_dir(data_dir)),
        checkpoints_dir=str(paths.checkpoints_dir(data_dir, job["id"])),
        resume_from=str(resume_copy(data_dir, job["id"], checkpoint)) if checkpoint else None,
        wandb=_wandb(wandb) if wandb else None,
    )

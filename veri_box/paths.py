"""The data directory's layout: every file the server or a trainer reads or writes, in one place.

    DATA_DIR/veri-box.db                     the store (SQLite, WAL)
    DATA_DIR/veri-box.lock                   held by the one server of this data dir
    DATA_DIR/tmp/                            uploads being received (spooled before inspection)
    DATA_DIR/datasets/DS_ID/                 an inspected dataset
    DATA_DIR/reward_functions/RF_ID.py       an uploaded (or inline) reward function
    DATA_DIR/models/                         built-in tiny models, built by trainers on first use
    DATA_DIR/jobs/JOB_ID/                    one job: config.json, progress.jsonl, train.log,
                                             reward_functions/, checkpoints/, output/, model.tar.gz,
                                             merged/ (the LoRA merged into its base), merge.log
    DATA_DIR/ssh/id_ed25519(.pub)            the box's key pair for rented instances (0600)

Signed download links name files relative to DATA_DIR (`jobs/JOB_ID/...`), so the names below
are also part of the links the API hands out.
"""

from __future__ import annotations

from pathlib import Path

from trainers.contract import CONFIG_FILE
from trainers.progress import PROGRESS_FILE

DB_FILE = "veri-box.db"
LOCK_FILE = "veri-box.lock"  # held by the one server of this data dir (holder's pid inside)
JOBS = "jobs"
TRAIN_LOG = "train.log"
OUTPUT_DIR = "output"
MODEL_ARCHIVE = "model.tar.gz"
CHECKPOINTS_DIR = "checkpoints"
MERGED_DIR = "merged"  # the base model with the job's LoRA merged in (veri_box/merges.py)
MERGE_LOG = "merge.log"
JOB_REWARD_FUNCTIONS_DIR = "reward_functions"


def db(data_dir: Path) -> Path:
    return data_dir / DB_FILE


def lock_file(data_dir: Path) -> Path:
    return data_dir / LOCK_FILE


def spool_dir(data_dir: Path) -> Path:
    return data_dir / "tmp"


def models_dir(data_dir: Path) -> Path:
    return data_dir / "models"


def dataset_dir(data_dir: Path, dataset_id: str) -> Path:
    return data_dir / "datasets" / dataset_id


def reward_functions_dir(data_dir: Path) -> Path:
    return data_dir / "reward_functions"


def reward_function_file(data_dir: Path, rf_id: str) -> Path:
    return reward_functions_dir(data_dir) / f"{rf_id}.py"


def jobs_dir(data_dir: Path) -> Path:
    return data_dir / JOBS


def job_dir(data_dir: Path, job_id: str) -> Path:
    return jobs_dir(data_dir) / job_id


def config_file(data_dir: Path, job_id: str) -> Path:
    return job_dir(data_dir, job_id) / CONFIG_FILE


def progress_file(data_dir: Path, job_id: str) -> Path:
    return job_dir(data_dir, job_id) / PROGRESS_FILE


def train_log(data_dir: Path, job_id: str) -> Path:
    return job_dir(data_dir, job_id) / TRAIN_LOG


def output_dir(data_dir: Path, job_id: str) -> Path:
    return job_dir(data_dir, job_id) / OUTPUT_DIR


def model_archive(data_dir: Path, job_id: str) -> Path:
    return job_dir(data_dir, job_id) / MODEL_ARCHIVE


def merged_dir(data_dir: Path, job_id: str) -> Path:
    return job_dir(data_dir, job_id) / MERGED_DIR


def checkpoints_dir(data_dir: Path, job_id: str) -> Path:
    return job_dir(data_dir, job_id) / CHECKPOINTS_DIR


def ssh_key(data_dir: Path) -> Path:
    """The box's one SSH private key (its public half beside it, `.pub`): it logs in to every
    instance the box rents."""
    return data_dir / "ssh" / "id_ed25519"


def job_reward_functions_dir(data_dir: Path, job_id: str) -> Path:
    """The job's own copies of its reward functions: the originals may be deleted once it ends."""
    return job_dir(data_dir, job_id) / JOB_REWARD_FUNCTIONS_DIR


def job_relative(job_id: str, *parts: str) -> str:
    """A job's file as signed links name it: relative to DATA_DIR, in posix form."""
    return "/".join((JOBS, job_id, *parts))

"""Every server setting, declared once with its default and help text.

Settings are read once (command-line flags, then environment, then these defaults)
and passed down; nothing else reads the environment.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path


def default_data_dir() -> Path:
    env = os.environ.get("VERI_BOX_HOME")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".local" / "share" / "veri-box"


DEFAULT_TRAINERS = {"grpo": "trainers.grpo", "sft_video_gen": "trainers.video"}


class SettingsError(ValueError):
    pass


def _pairs(text: str, flag: str) -> dict[str, str]:
    pairs = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise SettingsError(f"{flag} expects NAME=VALUE pairs separated by commas; got {part!r}")
        pairs[name.strip()] = value.strip()
    return pairs


@dataclass(frozen=True)
class Settings:
    data_dir: Path = field(
        default_factory=default_data_dir,
        metadata={
            "help": "Where the database, datasets, reward functions and job files live "
            "(default: $VERI_BOX_HOME or ~/.local/share/veri-box)."
        },
    )
    host: str = field(default="127.0.0.1", metadata={"help": "Address to listen on."})
    port: int = field(default=8000, metadata={"help": "Port to listen on."})
    public_url: str | None = field(
        default=None,
        metadata={
            "help": "Base URL clients use to reach this box, for dashboard and download "
            "links (default: http://HOST:PORT)."
        },
    )
    gpus: str = field(
        default="auto",
        metadata={
            "help": "GPU inventory: 'auto' (detect with nvidia-smi), 'none', or a declared "
            "list such as 'A100-80GB:2,L4-24GB:1'."
        },
    )
    cpu_slots: int = field(
        default=1,
        metadata={"help": "How many jobs may train on the CPU at once (the 'cpu' device type); 0 disables it."},
    )
    max_upload_mb: int = field(default=2048, metadata={"help": "Largest dataset upload accepted, in MiB."})
    download_url_ttl_s: int = field(
        default=3600,
        metadata={"help": "How long signed model download links stay valid, in seconds."},
    )
    price_per_hour: str = field(
        default="",
        metadata={
            "help": "Price per device-hour used for cost_usd, as TYPE=USD pairs such as "
            "'A100-80GB=1.89,H100-80GB=2.99' (unlisted types, and cpu, cost 0)."
        },
    )
    cancel_grace_s: float = field(
        default=5.0,
        metadata={"help": "Seconds a cancelled trainer gets to save and stop after SIGTERM before SIGKILL."},
    )
    sandbox: str = field(
        default="auto",
        metadata={
            "help": "Where trainers (and the reward functions inside them) run: 'bwrap' in a bubblewrap "
            "sandbox (no database, secrets, other jobs or network), 'none' as plain processes, or 'auto' "
            "(bwrap when it works on this machine)."
        },
    )
    heartbeat_timeout_s: float = field(
        default=600.0,
        metadata={
            "help": "Cancel a job whose client sent heartbeats (requires_heartbeat) and then fell silent for "
            "this many seconds; 0 disables. Jobs that never sent one are not affected."
        },
    )
    stall_timeout_s: float = field(
        default=1800.0,
        metadata={
            "help": "Fail a running job (trainer_stalled) whose trainer reports nothing for this many seconds; "
            "0 disables."
        },
    )
    deployment_idle_stop_s: float = field(
        default=1800.0,
        metadata={
            "help": "Stop a deployment (freeing its device) that has answered no chat request for this many "
            "seconds, with an idle_stopped event; 0 disables."
        },
    )
    system_metrics_interval_s: float = field(
        default=5.0,
        metadata={
            "help": "Record CPU, memory and (with nvidia-smi) GPU use of each local job as system/* metrics "
            "every this many seconds; 0 disables."
        },
    )
    slurm: str = field(
        default="",
        metadata={
            "help": "Slurm partitions to run jobs on, as PARTITION[,PARTITION...]; their GPU types become "
            "device types jobs can ask for (provider 'slurm'). The data directory must be on a filesystem "
            "the compute nodes share. Empty: no cluster."
        },
    )
    slurm_account: str = field(default="", metadata={"help": "Slurm account for sbatch --account (empty: none)."})
    slurm_extra: str = field(
        default="",
        metadata={"help": "Extra sbatch flags for this site, e.g. '--qos=normal --constraint=ib' (empty: none)."},
    )
    slurm_gpu_map: str = field(
        default="",
        metadata={
            "help": "GRES GPU names to API types, as GRES=TYPE pairs such as 'a100=A100-80GB,rtx=RTX4090-24GB', "
            "for site-specific names the built-in mapping does not know."
        },
    )
    burst_after_s: float = field(
        default=0.0,
        metadata={
            "help": "Send a job that has waited this many seconds for busy local devices to the cheapest "
            "configured cloud provider instead (only jobs that name no provider); 0 disables."
        },
    )
    provisioning_timeout_s: float = field(
        default=1200.0,
        metadata={
            "help": "Fail a cloud job (provisioning_timeout) whose instance is not training within this many "
            "seconds of launch; the instance is terminated."
        },
    )
    instance_lost_s: float = field(
        default=300.0,
        metadata={
            "help": "Fail a cloud job (provider_error) whose instance cannot be reached over SSH for this many "
            "seconds; the instance is terminated."
        },
    )
    hf_endpoint: str = field(
        default="https://huggingface.co",
        metadata={
            "help": "The Hugging Face Hub the box checks tokens with and pushes models to (hf_push); "
            "a private Hub's address, or a test stand-in's."
        },
    )
    trainers: str = field(
        default="",
        metadata={
            "help": "Trainer module per method, as METHOD=MODULE pairs (default: "
            "grpo=trainers.grpo,sft_video_gen=trainers.video); for custom trainers."
        },
    )

    def prices(self) -> dict[str, float]:
        prices = {}
        for name, price in _pairs(self.price_per_hour, "--price-per-hour").items():
            try:
                prices[name] = float(price)
            except ValueError:
                raise SettingsError(f"--price-per-hour: {price!r} for {name} is not a number") from None
            if prices[name] < 0:
                raise SettingsError(f"--price-per-hour: the price for {name} must not be negative")
        return prices

    def slurm_partitions(self) -> list[str]:
        return [p.strip() for p in self.slurm.split(",") if p.strip()]

    def slurm_gpu_names(self) -> dict[str, str]:
        return _pairs(self.slurm_gpu_map, "--slurm-gpu-map")

    def trainer_modules(self) -> dict[str, str]:
        return {**DEFAULT_TRAINERS, **_pairs(self.trainers, "--trainers")}

    @property
    def base_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}"

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * 1024 * 1024


def describe() -> list[tuple[str, object, str]]:
    """(name, default, help) for every setting: the CLI and docs are built from this."""
    rows = []
    for f in fields(Settings):
        default = f.default_factory() if callable(f.default_factory) else f.default  # type: ignore[misc]
        rows.append((f.name, default, f.metadata["help"]))
    return rows

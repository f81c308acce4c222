"""A lab's Slurm cluster as a place to train: its partitions' GPU types become device types,
and a job on one of them is an `sbatch` job.

The data directory is on a filesystem the compute nodes share (the usual NFS or Lustre home),
so the trainer writes progress.jsonl, train.log, checkpoints and the model straight into its job
directory, and the runner reads them as for a local trainer. The box checks that at start with
a tiny Slurm job that reads a token file from the data directory (`connect`).

Slurm owns the queue: a job is submitted as soon as it is placed, waits in Slurm (its PENDING
reason an event), and is followed by its Slurm job id, which is saved in SQLite, so a
restarted box picks it up again. Everything here talks to Slurm through its command-line tools
(sbatch, squeue, scontrol, scancel, sinfo, and sacct where the site keeps accounting), the one
interface every site has.

The batch script (`batch_script`) is written to JOB_DIR/slurm.sh for a person to read and is
what slurmctld stores. It asks for `--signal=B:TERM@60`: Slurm's warning of the time limit goes
to the batch shell, which notes it (JOB_DIR/slurm-time-limit) and passes it on to the trainer as
save-and-stop with `scancel --signal=TERM`. The warning cannot go to the trainer's step
directly: srun answers a SIGTERM by killing its tasks, and a trainer that stops early on its own
would look like one that finished. A cancel from the box signals the trainer's step the same
way and tells the batch shell (SIGUSR1), which then ends the job with `scancel`, so Slurm
records it CANCELLED.
"""

from __future__ import annotations

import logging
import math
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from trainers.contract import JobConfig

from . import paths, sandbox
from .executors import device_cost, trainer_command
from .inventory import _FAMILIES
from .settings import Settings, SettingsError
from .store import Store, now

log = logging.getLogger("veri_box.slurm")

TOOLS = ("sbatch", "squeue", "scontrol", "scancel", "sinfo")
COMMAND_TIMEOUT_S = 30
CHECK_TIMEOUT_S = 120  # the shared-filesystem check job: queue wait and run
SINFO_TTL_S = 10  # availability and placement read a cached sinfo at most this old
TIME_LIMIT_WARNING_S = 60  # --signal: the trainer's time to save before the limit
TIME_LIMIT_MARKER = "slurm-time-limit"  # written by the batch shell when Slurm warned it
SCRIPT = "slurm.sh"
MAIN_PORT = 29500  # accelerate's rendezvous port on the first node of a multi-node job

# GRES type names as sites spell them -> the API's type names. Sites name their GRES types
# freely; these are the common short names (and the lower-case names of slurmd's NVML
# autodetection, which carry the memory size: `nvidia_a100-sxm4-40gb`). A name not here is
# read as a GPU family with a size in it (`a100_40g`, `h100-94gb`), else as a family at its
# usual size (below); `--slurm-gpu-map GRES=TYPE` overrides all of it.
BUILT_IN_GPUS = {
    "a100": "A100-80GB",
    "a100_80g": "A100-80GB",
    "a100_40g": "A100-40GB",
    "a10": "A10-24GB",
    "a10g": "A10-24GB",
    "a40": "A40-48GB",
    "a6000": "A6000-48GB",
    "rtx_a6000": "A6000-48GB",
    "a800": "A800-80GB",
    "h100": "H100-80GB",
    "h100_nvl": "H100-94GB",
    "h200": "H200-141GB",
    "gh200": "GH200-96GB",
    "h20": "H20-96GB",
    "b200": "B200-180GB",
    "l40s": "L40S-48GB",
    "l40": "L40-48GB",
    "l4": "L4-24GB",
    "v100": "V100-32GB",
    "v100s": "V100-32GB",
    "t4": "T4-16GB",
    "rtx3090": "RTX3090-24GB",
    "rtx4090": "RTX4090-24GB",
    "rtx5090": "RTX5090-32GB",
    "rtx6000ada": "RTX6000Ada-48GB",
    "rtxpro6000": "RTXPRO6000-96GB",
}
# A family's usual memory, for GRES names that say the family only.
FAMILY_SIZES = {
    "A100": 80, "A800": 80, "A6000": 48, "A40": 48, "A10": 24, "H100": 80, "H200": 141, "H20": 96,
    "GH200": 96, "B200": 180, "L40S": 48, "L40": 48, "L4": 24, "V100": 32, "T4": 16, "RTX3090": 24,
    "RTX4090": 24, "RTX5090": 32, "RTX6000Ada": 48, "RTXPRO6000": 96,
}  # fmt: skip

# Slurm job states (squeue %T, sacct State, scontrol JobState) in which the job is not over.
ACTIVE_STATES = {
    "PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_FED",
    "REQUEUE_HOLD", "RESIZING", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD", "STOPPED",
}  # fmt: skip
WAITING_STATES = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESV_DEL_HOLD"}


def run_tool(
    args: list[str], timeout: float = COMMAND_TIMEOUT_S, input: str | None = None
) -> subprocess.CompletedProcess:
    """A Slurm client command; OSError if it cannot be run or does not answer in time."""
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=timeout, input=input)
    except subprocess.TimeoutExpired:
        raise OSError(f"`{' '.join(args[:2])}` did not answer within {timeout:g} s") from None


# -- GRES ------------------------------------------------------------------------------------


def parse_gres(text: str) -> list[tuple[str | None, int]]:
    """The GPUs in a node's GRES string, as (type or None, count): 'gpu:a100:4(S:0-1),gpu:v100:2'
    -> [('a100', 4), ('v100', 2)]; 'gpu:2' -> [(None, 2)]. Other GRES (mps, shard...) are not GPUs."""
    gpus = []
    for part in re.split(r",(?![^()]*\))", text or ""):
        part = re.sub(r"\(.*\)$", "", part.strip())  # socket affinity, used indices
        fields = part.split(":")
        if fields[0] != "gpu" or len(fields) < 2:
            continue
        count_text = fields[-1]
        if not count_text.isdigit():
            continue
        gpus.append((fields[1] if len(fields) >= 3 else None, int(count_text)))
    return gpus


def _family(name: str) -> str | None:
    spaced = re.sub(r"[_\-]+", " ", name)
    return next((family for pattern, family in _FAMILIES if re.search(pattern, spaced, re.I)), None)


def gpu_type(gres_type: str | None, overrides: dict[str, str]) -> str | None:
    """The API type of a GRES GPU type name, or None if it cannot be told ('gpu' stands for an
    untyped `gpu:N` in --slurm-gpu-map)."""
    key = (gres_type or "gpu").lower()
    lowered = {name.lower(): value for name, value in overrides.items()}
    if key in lowered:
        return lowered[key]
    if gres_type is None:
        return None
    if key in BUILT_IN_GPUS:
        return BUILT_IN_GPUS[key]
    family = _family(key)
    if family is None:
        return None
    size = re.search(r"(\d+)\s*g(?:b)?\b", re.sub(r"[_\-]", " ", key))
    if size:
        return f"{family}-{int(size.group(1))}GB"
    return f"{family}-{FAMILY_SIZES[family]}GB" if family in FAMILY_SIZES else None


# -- the cluster -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Node:
    name: str
    partition: str
    gres_type: str | None  # Slurm's GPU type name (None: untyped `gpu:N`)
    gpu_type: str  # the API's
    gpus: int
    gpus_used: int
    cpus: int
    memory_mb: int
    state: str

    @property
    def usable(self) -> bool:
        # A node that is down, drained or failing takes no new job; `idle`, `mixed`,
        # `allocated` and `completing` are a node at work.
        return not any(
            bad in self.state for bad in ("down", "drain", "fail", "inval", "maint", "unknown", "not_responding")
        )


@dataclass
class Cluster:
    """The partitions the box may use, as sinfo shows them (cached for SINFO_TTL_S)."""

    partitions: list[str]
    gpu_names: dict[str, str]
    prices: dict[str, float] = field(default_factory=dict)  # --price-per-hour, per GPU of a type
    nodes: list[Node] = field(default_factory=list)
    unmapped: set[str] = field(default_factory=set)
    read_at: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def refresh(self, force: bool = False) -> list[Node]:
        with self._lock:
            if force or time.monotonic() - self.read_at > SINFO_TTL_S:
                try:
                    self.nodes, self.unmapped = read_nodes(self.partitions, self.gpu_names)
                    self.read_at = time.monotonic()
                except OSError as err:  # keep the last view: a slow controller must not empty the box
                    log.warning("sinfo failed: %s", err)
            return self.nodes

    def types(self) -> dict[str, int]:
        """API GPU type -> GPUs on the largest node that has it."""
        best: dict[str, int] = {}
        for node in self.refresh():
            best[node.gpu_type] = max(best.get(node.gpu_type, 0), node.gpus)
        return best

    def max_gpus(self, gpu_type: str) -> int:
        """The most GPUs of the type one job can have: the largest node's times the nodes of
        that size in its partition (a multi-node job)."""
        best = 0
        for node in self._largest(gpu_type):
            same = [
                n
                for n in self.refresh()
                if n.partition == node.partition and n.gpu_type == gpu_type and n.gpus >= node.gpus
            ]
            best = max(best, node.gpus * len(same))
        return best

    def placement(self, gpu_type: str, count: int) -> Placement | None:
        """Where a job of `count` GPUs of the type goes: the partition with the largest nodes of
        it (in --slurm order on ties), and how many nodes; None if no partition can hold it."""
        for node in self._largest(gpu_type):
            nodes = math.ceil(count / node.gpus)
            per_node = count // nodes
            same = [
                n
                for n in self.refresh()
                if n.partition == node.partition and n.gpu_type == gpu_type and n.gpus >= per_node
            ]
            if per_node * nodes == count and len(same) >= nodes:
                cpus = max(1, node.cpus * per_node // node.gpus)
                memory = node.memory_mb * per_node // node.gpus if node.memory_mb > 1 else 0
                return Placement(node.partition, node.gres_type, nodes, per_node, cpus, memory)
        return None

    def _largest(self, gpu_type: str) -> list[Node]:
        """One node per partition, the largest of the type; largest first, then --slurm order."""
        found: dict[str, Node] = {}
        for node in self.refresh():
            if node.gpu_type == gpu_type and (node.partition not in found or node.gpus > found[node.partition].gpus):
                found[node.partition] = node
        return sorted(found.values(), key=lambda n: (-n.gpus, self.partitions.index(n.partition)))

    def availability(self) -> list[dict]:
        """One row per partition and GPU type: {provider: 'slurm', gpu_type, region (the
        partition), gpu_count (GPUs on its largest node), available (the most idle GPUs on one
        node that takes jobs), status, price_per_hr (--price-per-hour for the type x gpu_count),
        detail}."""
        rows: dict[tuple[str, str], dict] = {}
        for node in self.refresh():
            row = rows.setdefault((node.partition, node.gpu_type), {"gpus": 0, "idle": 0, "usable": 0, "nodes": 0})
            row["gpus"] = max(row["gpus"], node.gpus)
            row["nodes"] += 1
            if node.usable:
                row["usable"] += 1
                row["idle"] = max(row["idle"], node.gpus - node.gpus_used)
        out = []
        for (partition, kind), row in rows.items():
            status = "available" if row["idle"] else ("busy" if row["usable"] else "unavailable")
            out.append(
                {
                    "provider": "slurm",
                    "gpu_type": kind,
                    "region": partition,
                    "gpu_count": row["gpus"],
                    "available": row["idle"],
                    "status": status,
                    "price_per_hr": round(self.prices.get(kind, 0.0) * row["gpus"], 6),
                    "detail": f"{row['nodes']} node(s), {row['usable']} taking jobs",
                }
            )
        return out


@dataclass(frozen=True)
class Placement:
    partition: str
    gres_type: str | None
    nodes: int
    gpus_per_node: int
    cpus_per_node: int
    memory_mb_per_node: int  # 0: the cluster does not schedule memory


def read_nodes(partitions: list[str], gpu_names: dict[str, str]) -> tuple[list[Node], set[str]]:
    """The GPU nodes of the partitions (one Node per node, partition and GPU type), and the
    GRES type names no mapping knew."""
    fmt = "Partition:|,NodeHost:|,Gres:|,GresUsed:|,CPUs:|,Memory:|,StateLong:"
    done = run_tool(["sinfo", "--noheader", "--Node", "--partition", ",".join(partitions), "--Format", fmt])
    if done.returncode != 0:
        raise OSError(f"sinfo failed: {(done.stderr or done.stdout).strip()}")
    nodes, unmapped = [], set()
    for line in done.stdout.splitlines():
        parts = [p.strip() for p in line.split("|")]
        if len(parts) < 7:
            continue
        partition, name, gres, used, cpus, memory, state = parts[:7]
        partition = partition.rstrip("*")  # the default partition's mark
        used_by_type = {kind: count for kind, count in parse_gres(used)}
        for kind, count in parse_gres(gres):
            api = gpu_type(kind, gpu_names)
            if api is None:
                unmapped.add(kind or "gpu")
                continue
            nodes.append(
                Node(
                    name,
                    partition,
                    kind,
                    api,
                    count,
                    used_by_type.get(kind, 0),
                    _int(cpus),
                    _int(memory),
                    state.lower(),
                )
            )
    return nodes, unmapped


def _int(text: str) -> int:
    match = re.match(r"\d+", text)
    return int(match.group()) if match else 0


def connect(settings: Settings) -> Cluster:
    """The cluster of --slurm, checked: the client tools answer, the partitions exist and have
    GPU GRES of known types, and a Slurm job can read a file of the data directory (the shared
    filesystem). Raises SettingsError saying what to fix."""
    partitions = settings.slurm_partitions()
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        raise SettingsError(
            f"--slurm: {', '.join(missing)} not found on PATH; install Slurm's client commands on this "
            "machine (Debian/Ubuntu: apt-get install slurm-client) with the cluster's slurm.conf (or SLURM_CONF)."
        )
    try:
        known = _partitions()
        absent = [p for p in partitions if p not in known]
        if absent:
            raise SettingsError(
                f"--slurm: the cluster has no partition {', '.join(map(repr, absent))}; it has: "
                f"{', '.join(sorted(known)) or 'none'}."
            )
        cluster = Cluster(partitions, settings.slurm_gpu_names(), settings.prices())
        cluster.nodes, cluster.unmapped = read_nodes(partitions, cluster.gpu_names)
        cluster.read_at = time.monotonic()
    except OSError as err:
        raise SettingsError(f"--slurm: cannot reach the Slurm controller: {err}") from None
    if cluster.unmapped:
        log.warning(
            "Slurm GRES GPU type(s) %s have no API type name; map them with --slurm-gpu-map NAME=TYPE",
            ", ".join(sorted(cluster.unmapped)),
        )
    if not cluster.nodes:
        hint = (
            f"its GRES GPU type(s) {', '.join(sorted(cluster.unmapped))} need a name: --slurm-gpu-map NAME=A100-80GB"
            if cluster.unmapped
            else "their nodes have no `gpu` GRES (gres.conf, Gres= in slurm.conf)"
        )
        raise SettingsError(f"--slurm: partition(s) {', '.join(partitions)} have no GPUs the box can use: {hint}.")
    check_shared_filesystem(settings, partitions[0])
    return cluster


def _partitions() -> set[str]:
    done = run_tool(["sinfo", "--noheader", "--format", "%R"])
    if done.returncode != 0:
        raise OSError((done.stderr or done.stdout).strip() or f"sinfo exited with {done.returncode}")
    return {line.strip() for line in done.stdout.splitlines() if line.strip()}


def check_dir(data_dir: Path) -> Path:
    return data_dir / "slurm"


def check_shared_filesystem(settings: Settings, partition: str) -> None:
    """A one-CPU Slurm job reads a fresh token from the data directory and writes it back with
    whether the box's Python is there: both must come back through the shared filesystem."""
    folder = check_dir(settings.data_dir.resolve())
    folder.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(16)
    token_file, answer = folder / "token", folder / f"check-{token}.out"
    token_file.write_text(token)
    script = "\n".join(
        [
            "#!/bin/sh",
            f"echo token=$(cat {shlex.quote(str(token_file))})",
            f"test -x {shlex.quote(sys.executable)} && echo python=ok || echo python=missing",
            "echo node=$(hostname)",
            "",
        ]
    )
    args = ["sbatch", "--parsable", "--job-name=veri-box-check", f"--partition={partition}", "--ntasks=1"]
    args += ["--cpus-per-task=1", "--time=2", f"--output={answer}", "--export=NONE", *_site_flags(settings)]
    try:
        done = run_tool(args, input=script)
        if done.returncode != 0:
            raise SettingsError(f"--slurm: sbatch refused the box's check job: {(done.stderr or done.stdout).strip()}")
        job_id = done.stdout.strip().split(";")[0]
        deadline = time.monotonic() + CHECK_TIMEOUT_S
        state = None
        while time.monotonic() < deadline:
            state = job_states([job_id]).get(job_id)
            if state is not None and state.state not in ACTIVE_STATES:
                break
            time.sleep(0.3)
        else:
            run_tool(["scancel", job_id])
            reason = f" (Slurm: {state.state}, {state.reason})" if state else ""
            raise SettingsError(
                f"--slurm: the check job {job_id} did not finish within {CHECK_TIMEOUT_S} s{reason}; the box "
                f"checks at start that partition {partition} can run a one-CPU job that reads its data directory."
            )
        text = _read_settled(answer)
    except OSError as err:
        raise SettingsError(f"--slurm: the check job could not be run: {err}") from None
    finally:
        token_file.unlink(missing_ok=True)
    answer.unlink(missing_ok=True)
    fields = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    where = f"on node {fields['node']}" if fields.get("node") else f"in partition {partition}"
    if fields.get("token") != token:
        raise SettingsError(
            f"--slurm: the data directory {settings.data_dir} is not shared with the compute nodes: a Slurm job "
            f"{where} could not read {token_file} and write its answer there. Put --data-dir on the cluster's "
            "shared filesystem (NFS, Lustre, ...), mounted at the same path on every node."
        )
    if fields.get("python") != "ok":
        raise SettingsError(
            f"--slurm: the box's Python {sys.executable} is missing {where}; install the box (its .venv) on the "
            "shared filesystem too, at the same path on every node."
        )


def _read_settled(path: Path, wait_s: float = 10.0) -> str:
    """A file a job on another machine wrote: on NFS it may show up a moment after the job ends."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            text = path.read_text(errors="replace")
            if text.strip() or time.monotonic() > deadline:
                return text
        except FileNotFoundError:
            if time.monotonic() > deadline:
                return ""
        time.sleep(0.2)


def _site_flags(settings: Settings) -> list[str]:
    flags = [f"--account={settings.slurm_account}"] if settings.slurm_account else []
    return flags + shlex.split(settings.slurm_extra)


# -- job state -------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobState:
    job_id: str
    state: str  # Slurm's word: PENDING, RUNNING, COMPLETED, TIMEOUT, ...
    reason: str = ""
    exit_code: int | None = None  # the batch script's: -N for a signal, else its code
    nodes: str = ""
    elapsed: str = ""
    time_limit: str = ""

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES


def _wait_status(raw: str) -> int | None:
    """squeue's exit_code is the raw wait status: exit code << 8 | signal."""
    if not raw.isdigit():
        return None
    status = int(raw)
    return -(status & 0x7F) if status & 0x7F else _signal_code(status >> 8)


def _signal_code(code: int) -> int:
    """A shell reports a child killed by signal N as 128 + N: read it back as -N."""
    return -(code - 128) if 128 < code < 128 + 65 else code


def _exit_pair(text: str) -> int | None:
    """sacct's and scontrol's ExitCode 'code:signal'."""
    match = re.fullmatch(r"(\d+):(\d+)", text.strip())
    if not match:
        return None
    code, sig = int(match.group(1)), int(match.group(2))
    return -sig if sig else _signal_code(code)


def job_states(job_ids: list[str]) -> dict[str, JobState]:
    """The state of each job Slurm knows, in one squeue call for all of them; jobs squeue has
    forgotten are looked up in sacct (sites with accounting), then scontrol."""
    if not job_ids:
        return {}
    fmt = "JobID:|,State:|,Reason:|,exit_code:|,TimeUsed:|,TimeLimit:|,NodeList:"
    done = run_tool(["squeue", "--noheader", "--states=all", "--jobs", ",".join(job_ids), "--Format", fmt])
    states: dict[str, JobState] = {}
    if done.returncode == 0:
        for line in done.stdout.splitlines():
            parts = [p.strip() for p in line.split("|")]
            if len(parts) >= 7 and parts[0] in job_ids:
                states[parts[0]] = JobState(
                    parts[0], parts[1].split()[0], parts[2], _wait_status(parts[3]), parts[6], parts[4], parts[5]
                )
    elif "Invalid job id" not in done.stderr:
        raise OSError(f"squeue failed: {done.stderr.strip()}")
    for job_id in job_ids:
        if job_id not in states:
            found = _sacct(job_id) or _scontrol(job_id)
            if found:
                states[job_id] = found
    return states


def _sacct(job_id: str) -> JobState | None:
    done = run_tool(
        [
            "sacct",
            "--noheader",
            "--parsable2",
            "--jobs",
            job_id,
            "--format",
            "JobID,State,ExitCode,Elapsed,Timelimit,NodeList,Reason",
        ]
    )
    if done.returncode != 0:
        return None  # no accounting here
    for line in done.stdout.splitlines():
        parts = line.split("|")
        if len(parts) >= 7 and parts[0] == job_id:
            return JobState(job_id, parts[1].split()[0], parts[6], _exit_pair(parts[2]), parts[5], parts[3], parts[4])
    return None


def _scontrol(job_id: str) -> JobState | None:
    done = run_tool(["scontrol", "--oneliner", "show", "job", job_id])
    if done.returncode != 0:
        return None
    fields = dict(re.findall(r"(\w+)=(\S*)", done.stdout))
    if fields.get("JobId") != job_id:
        return None
    return JobState(
        job_id,
        fields.get("JobState", "UNKNOWN"),
        fields.get("Reason", ""),
        _exit_pair(fields.get("ExitCode", "")),
        fields.get("NodeList", ""),
        fields.get("RunTime", ""),
        fields.get("TimeLimit", ""),
    )


# -- the batch script ------------------------------------------------------------------------


def job_name(box_id: str, job: dict) -> str:
    """`veri-box-<box id>-<job id>-<output name>`: squeue shows whose and which job it is, and
    the prefix finds this box's jobs after a crash."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", job.get("output_name") or "")[:40].strip("_")
    return f"{name_prefix(box_id)}{job['id']}" + (f"-{name}" if name else "")


def name_prefix(box_id: str) -> str:
    return f"veri-box-{box_id}-"


def task_command(module: str, job_dir: str, placement: Placement, python: str = sys.executable) -> list[str]:
    """What one node runs: the trainer, or with several GPUs (or nodes) `accelerate launch`,
    one per node, its rank and the first node's address from Slurm (expanded on the node)."""
    total = placement.nodes * placement.gpus_per_node
    if total == 1:
        return [python, "-m", module, job_dir]
    launch = [python, "-m", "accelerate.commands.launch", "--num_processes", str(total)]
    launch += ["--num_machines", str(placement.nodes)]
    if placement.nodes > 1:
        launch += ["--machine_rank", "$SLURM_NODEID", "--main_process_ip", "$main_process_ip"]
        launch += ["--main_process_port", str(MAIN_PORT)]
    return [*launch, "-m", module, job_dir]


def _words(command: list[str]) -> str:
    """A command line for the node's shell: $SLURM_NODEID and $main_process_ip are left for it
    to expand there, everything else is quoted."""
    return " ".join(f'"{c}"' if c.startswith("$") else shlex.quote(c) for c in command)


def batch_script(
    job: dict,
    job_dir: str,
    placement: Placement,
    name: str,
    task: list[str],
    env: dict[str, str],
    bwrap: list[str] | None = None,
    sandbox_required: bool = False,
) -> str:
    """The sbatch script of a job. `task` is the command each node runs (see task_command),
    `env` the trainer's whole environment (nothing of the box's or of Slurm's own gets in),
    `bwrap` the bubblewrap argv to run it in (without the device nodes, found on the node, and
    the closing `--`): used where bwrap works on the node, and then required if
    `sandbox_required` (--sandbox bwrap), else a warning in train.log."""
    q = shlex.quote
    gres = (
        f"gpu:{placement.gres_type}:{placement.gpus_per_node}"
        if placement.gres_type
        else f"gpu:{placement.gpus_per_node}"
    )
    directives = [
        f"--job-name={name}",
        f"--partition={placement.partition}",
        f"--nodes={placement.nodes}",
        "--ntasks-per-node=1",
        f"--gres={gres}",
        f"--cpus-per-task={placement.cpus_per_node}",
        *([f"--mem={placement.memory_mb_per_node}M"] if placement.memory_mb_per_node else []),
        f"--signal=B:TERM@{TIME_LIMIT_WARNING_S}",
        "--no-requeue",  # a rerun would start the trainer over and report its steps twice
        f"--output={job_dir}/{paths.TRAIN_LOG}",
        "--open-mode=append",
        f"--chdir={job_dir}",
        "--export=NONE",
    ]
    # Slurm sets CUDA_VISIBLE_DEVICES to the GPUs it gave the job on the node: that one wins.
    assignments = " ".join(q(f"{k}={v}") for k, v in sorted(env.items()) if k != "CUDA_VISIBLE_DEVICES")
    launch_env = f'env -i {assignments} CUDA_VISIBLE_DEVICES="${{CUDA_VISIBLE_DEVICES-}}"'
    plain = f"exec {launch_env} {_words(task)}"
    task_lines = [
        'echo "veri-box: $(hostname), node $SLURM_NODEID of $SLURM_NNODES, GPUs ${CUDA_VISIBLE_DEVICES-none}" >&2'
    ]
    if placement.nodes > 1:
        task_lines.append('main_process_ip="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"')
    if bwrap is None:
        task_lines.append(plain)
    else:
        without = (
            'echo "veri-box: bubblewrap does not work on $(hostname) (--sandbox bwrap): not started" >&2; exit 3'
            if sandbox_required
            else 'echo "veri-box: bubblewrap does not work on $(hostname): the trainer runs WITHOUT a sandbox" >&2; '
            + plain
        )
        task_lines += [
            "gpu_binds=()",
            'for dev in /dev/nvidia* /dev/dri; do [ -e "$dev" ] && gpu_binds+=(--dev-bind "$dev" "$dev"); done',
            "if bwrap --unshare-all --die-with-parent --as-pid-1 --ro-bind / / true 2>/dev/null; then",
            # Ignored, SIGTERM stays ignored through exec: Slurm signals every process of the
            # step, and bwrap must not die of it before the trainer (its own handler) has saved.
            "  trap '' TERM",
            f'  exec {launch_env} {_words(bwrap)} "${{gpu_binds[@]}}" -- {_words(task)}',
            "else",
            f"  {without}",
            "fi",
        ]
    lines = [
        "#!/bin/bash",
        f"# veri-box job {job['id']}: written by the box; slurmctld keeps the copy it runs.",
        *(f"#SBATCH {d}" for d in directives),
        "export PATH=/usr/local/bin:/usr/bin:/bin:$PATH",
        f"job_dir={q(job_dir)}",
        # Slurm's warning before the time limit (--signal=B:TERM) comes to this shell: it notes
        # why, and asks the trainer's step to save and stop.
        f'trap \'date -u +%FT%TZ > "$job_dir/{TIME_LIMIT_MARKER}"; scancel --signal=TERM "$SLURM_JOB_ID"\' TERM',
        # The box's cancel: SIGTERM to the trainer's step, SIGUSR1 here; once the trainer has
        # saved and stopped, this shell ends the job so that Slurm records it CANCELLED.
        "cancelled=0",
        "trap 'cancelled=1' USR1",
        # One task per node, each running this (expanded there: its rank, its GPUs).
        "read -r -d '' task <<'VERI_BOX_TASK'",
        *task_lines,
        "VERI_BOX_TASK",
        f'srun --nodes={placement.nodes} --ntasks-per-node=1 --kill-on-bad-exit=1 /bin/bash -c "$task" &',
        "trainer=$!",
        # A trapped signal interrupts `wait`: wait again until srun itself has ended.
        'while true; do wait "$trainer"; code=$?; kill -0 "$trainer" 2>/dev/null || break; done',
        'if [ "$cancelled" = 1 ]; then trap - TERM; scancel "$SLURM_JOB_ID"; sleep 10; fi',
        'exit "$code"',
        "",
    ]
    return "\n".join(lines)


# -- the executor ----------------------------------------------------------------------------


class SlurmExecutor:
    """Jobs as sbatch jobs on the cluster of --slurm, found again by their Slurm job id
    (executor_state: slurm_job_id, partition, nodes, submitted_at, and as they happen
    pending_reason, running_at, node_list)."""

    def __init__(self, settings: Settings, store: Store, cluster: Cluster):
        self.settings = settings
        self.store = store
        self.cluster = cluster
        self.data_dir = settings.data_dir
        self.prices = settings.prices()
        self.sandbox = sandbox.resolve(settings.sandbox)
        self.box_id = store.box_id()
        self._lock = threading.Lock()
        self._states: dict[str, JobState] = {}
        self._read_at = 0.0
        self._answered = True  # whether the last squeue answered
        self._followed: set[str] = set()  # Slurm job ids of the box's jobs that have not ended
        self._submit_errors: dict[str, str] = {}

    # -- start ----------------------------------------------------------------------------

    def script(self, job: dict, config: JobConfig) -> tuple[str, Placement]:
        kind, count = config.devices.type, config.devices.count
        placement = self.cluster.placement(kind, count)
        if placement is None:
            raise OSError(
                f"no partition of --slurm {','.join(self.cluster.partitions)} can hold {count} {kind} GPU(s) "
                f"(one job can have at most {self.cluster.max_gpus(kind)}, the same number on each node)"
            )
        job_dir = str(Path(config.job_dir))
        module = config.trainer or ""
        _, env = trainer_command(module, Path(job_dir), kind, list(range(count)))
        # The node's CPUs Slurm gave the job, shared by its processes (torch takes every core).
        env["OMP_NUM_THREADS"] = str(max(1, placement.cpus_per_node // placement.gpus_per_node))
        task = task_command(module, job_dir, placement)
        bwrap = None
        if self.sandbox == sandbox.Mode.BWRAP:
            building = sandbox.model_to_build(config)
            Path(building or config.models_dir).mkdir(parents=True, exist_ok=True)
            # The paths to bind are the shared filesystem's, the same here; device nodes are the
            # compute node's, found there.
            host = sandbox.host(self.data_dir, env)
            host = sandbox.Host(**{**host.__dict__, "dev_entries": ()})
            prefix, env = sandbox.command(config, env, host)
            # bwrap from the node's PATH; the `--` comes after the node's devices. What this
            # machine has, a node may lack (an /etc file, a /sys directory): bound if there.
            bwrap = ["bwrap", *("--ro-bind-try" if a == "--ro-bind" else a for a in prefix[1:-1])]
        else:
            kept = (*sandbox.KEPT_ENV, "HOME", "PATH", "HF_HOME", "HF_HUB_CACHE")
            env = {k: v for k, v in env.items() if k in kept}
        name = job_name(self.box_id, job)
        required = self.settings.sandbox == sandbox.Mode.BWRAP
        return batch_script(job, job_dir, placement, name, task, env, bwrap, required), placement

    def start(self, job: dict, config: JobConfig) -> dict:
        try:
            text, placement = self.script(job, config)
            path = Path(config.job_dir) / SCRIPT
            path.write_text(text)
            done = run_tool(["sbatch", "--parsable", *_site_flags(self.settings), str(path)])
        except OSError as err:
            self._submit_errors[job["id"]] = str(err)
            raise
        if done.returncode != 0:
            message = (done.stderr or done.stdout).strip() or f"sbatch exited with {done.returncode}"
            self._submit_errors[job["id"]] = message
            raise OSError(f"sbatch refused the job: {message}")
        slurm_id = done.stdout.strip().split(";")[0]
        with self._lock:
            self._followed.add(slurm_id)
            self._read_at = 0.0
        self.store.add_event(
            job["id"],
            "slurm_submitted",
            {"slurm_job_id": slurm_id, "partition": placement.partition, "nodes": placement.nodes},
        )
        log.info("submitted %s as Slurm job %s on %s", job["id"], slurm_id, placement.partition)
        state = {
            "slurm_job_id": slurm_id,
            "partition": placement.partition,
            "nodes": placement.nodes,
            "submitted_at": now(),
        }
        return {"executor_state": state}

    # -- follow ---------------------------------------------------------------------------

    def _state(self, job: dict, fresh_s: float = 0.5) -> JobState | None:
        """The job's Slurm state, from one squeue call per tick for every job the box follows."""
        slurm_id = _slurm_id(job)
        if slurm_id is None:
            return None
        with self._lock:
            self._followed.add(slurm_id)
            if time.monotonic() - self._read_at > fresh_s or slurm_id not in self._states:
                try:
                    self._states.update(job_states(sorted(self._followed)))
                    self._read_at = time.monotonic()
                    self._answered = True
                except OSError as err:
                    self._answered = False
                    log.warning("squeue failed: %s", err)
            return self._states.get(slurm_id)

    def poll(self, job: dict) -> tuple[bool, int | None]:
        state = self._state(job)
        if state is None:
            # While the controller does not answer the job is not over; once it answers and no
            # tool knows the job, it is.
            return not self._answered and _slurm_id(job) is not None, None
        self._note(job, state)
        if state.active:
            return True, None
        with self._lock:
            self._followed.discard(state.job_id)
        if state.exit_code == 0 and self._warned(job):
            # A trainer told to save and stop before the time limit exits 0 too: only its
            # completion record, not the exit code, says whether it finished.
            return False, None
        return False, state.exit_code

    def _warned(self, job: dict) -> bool:
        return (paths.job_dir(self.data_dir, job["id"]) / TIME_LIMIT_MARKER).exists()

    def _note(self, job: dict, state: JobState) -> None:
        """Each new PENDING reason as a `slurm_pending` event; the start as `slurm_running`."""
        saved = dict(job.get("executor_state") or {})
        if state.state == "PENDING" and state.reason and saved.get("pending_reason") != state.reason:
            saved["pending_reason"] = state.reason
            self.store.add_event(job["id"], "slurm_pending", {"reason": state.reason, "slurm_job_id": state.job_id})
        elif state.state not in WAITING_STATES and not saved.get("running_at"):
            saved.update(running_at=now(), node_list=state.nodes)
            self.store.add_event(job["id"], "slurm_running", {"nodes": state.nodes, "slurm_job_id": state.job_id})
        else:
            return
        self.store.update_job(job["id"], executor_state=saved)
        job["executor_state"] = saved

    def read_progress(self, job: dict, offset: int, limit: int) -> bytes:
        try:
            with paths.progress_file(self.data_dir, job["id"]).open("rb") as fh:
                fh.seek(offset)
                return fh.read(limit)
        except FileNotFoundError:
            return b""

    def collect(self, job: dict) -> Path:
        return paths.output_dir(self.data_dir, job["id"])

    def reattach(self, job: dict) -> bool:
        state = self._state(job, fresh_s=0.0)
        if state is None:
            return not self._answered and _slurm_id(job) is not None
        return state.active

    # -- stop -----------------------------------------------------------------------------

    def cancel(self, job: dict, force: bool = False) -> bool:
        """A running trainer gets SIGTERM (its step) to save and stop, and the batch shell
        SIGUSR1 so the job then ends CANCELLED; a waiting job, or `force`, is scancelled."""
        slurm_id = _slurm_id(job)
        state = self._state(job)
        if slurm_id is None or (state is not None and not state.active):
            return False
        if force or state is None or state.state in WAITING_STATES:
            run_tool(["scancel", slurm_id])
            if force:  # the box's grace is over: not Slurm's KillWait on top of it
                run_tool(["scancel", "--full", "--signal=KILL", slurm_id])
            return True
        run_tool(["scancel", "--batch", "--signal=USR1", slurm_id])
        run_tool(["scancel", "--signal=TERM", slurm_id])
        return True

    def release(self, job: dict) -> None:
        slurm_id = _slurm_id(job)
        if slurm_id is None:
            return
        state = self._state(job, fresh_s=0.0)
        if state is None or state.active:
            run_tool(["scancel", slurm_id])
        with self._lock:
            self._followed.discard(slurm_id)

    def recover_orphans(self, active_job_ids: set[str]) -> None:
        """Cancel the Slurm jobs of this box that no active job owns (submitted just before a
        crash, before their id was saved)."""
        done = run_tool(["squeue", "--noheader", "--me", "--Format", "JobID:|,Name:"])
        if done.returncode != 0:
            log.warning("squeue failed: %s", done.stderr.strip())
            return
        prefix = name_prefix(self.box_id)
        for line in done.stdout.splitlines():
            slurm_id, _, name = (p.strip() for p in line.partition("|"))
            job_id = name[len(prefix) :].split("-")[0] if name.startswith(prefix) else None
            if job_id and job_id not in active_job_ids:
                log.warning("cancelling Slurm job %s (%s): no active job of this box owns it", slurm_id, name)
                run_tool(["scancel", slurm_id])

    # -- accounts -------------------------------------------------------------------------

    def failure(self, job: dict) -> tuple[str, str] | None:
        """Why Slurm ended the job, in words, when it was Slurm's doing; None when the trainer's
        own exit and log tell it (a crash, an error it reported)."""
        slurm_id = _slurm_id(job)
        if slurm_id is None:
            error = self._submit_errors.pop(job["id"], None)
            return ("slurm_submit_failed", f"Slurm did not take the job: {error}") if error else None
        state = self._state(job, fresh_s=0.0)
        if state is None:
            return (
                "slurm_job_lost",
                f"Slurm no longer knows job {slurm_id} (it forgets finished jobs after MinJobAge unless the "
                "site keeps accounting for sacct), so how it ended is unknown. Submit the job again.",
            )
        return describe_end(state, self._warned(job))

    def cost(self, job: dict, seconds: float) -> float:
        return device_cost(self.prices, job, seconds)


def describe_end(state: JobState, warned: bool = False) -> tuple[str, str] | None:
    """(code, message) for a Slurm job that ended by Slurm's doing; None for an ordinary
    COMPLETED or FAILED (the trainer's exit code and log say more). `warned`: the batch shell
    got the time-limit warning, so the trainer stopped to save before Slurm had to kill it."""
    where = f" on {state.nodes}" if state.nodes and state.nodes not in ("(null)", "None assigned") else ""
    how = _exit_words(state.exit_code)
    ran = f" after {state.elapsed}" if state.elapsed else ""
    limit = f" ({state.time_limit})" if state.time_limit else ""
    resume = (
        "Its checkpoints are kept: resume from the last one, with a longer --time "
        "(veri-box serve --slurm-extra=--time=...) or fewer steps."
    )
    if state.state == "TIMEOUT":
        return (
            "time_limit",
            f"Slurm job {state.job_id} reached its time limit{limit}{ran}{where} and Slurm ended it (state TIMEOUT, "
            f"{how}); the trainer had been told to save and stop {TIME_LIMIT_WARNING_S} s before. {resume}",
        )
    if warned and state.state in ("COMPLETED", "FAILED"):
        return (
            "time_limit",
            f"Slurm job {state.job_id} was near its time limit{limit}: warned {TIME_LIMIT_WARNING_S} s before it"
            f"{ran}{where}, the trainer saved and stopped (Slurm state {state.state}, {how}). {resume}",
        )
    if state.state == "NODE_FAIL":
        return (
            "node_fail",
            f"A node of Slurm job {state.job_id} failed{where}{ran} (Slurm state NODE_FAIL, {how}) and the trainer "
            "was lost with it. Resume from its last checkpoint, or submit the job again.",
        )
    if state.state == "OUT_OF_MEMORY":
        return (
            "out_of_memory",
            f"Slurm job {state.job_id} used more host memory than Slurm allotted it{where}{ran} (Slurm state "
            f"OUT_OF_MEMORY, {how}). Memory comes in proportion to the GPUs: ask for more, or lower "
            "global_batch_size.",
        )
    if state.state == "CANCELLED":
        return (
            "slurm_cancelled",
            f"Slurm job {state.job_id} was cancelled outside the box (scancel by its user or an administrator)"
            f"{ran}{where} (Slurm state CANCELLED, {how}).",
        )
    if state.state == "PREEMPTED":
        return (
            "preempted",
            f"Slurm preempted job {state.job_id}{where}{ran} for a job of higher priority (Slurm state PREEMPTED, "
            f"{how}). Resume from its last checkpoint.",
        )
    if state.state in ("BOOT_FAIL", "DEADLINE", "REVOKED", "SPECIAL_EXIT"):
        return (
            "slurm_failed",
            f"Slurm ended job {state.job_id}{where}{ran} with state {state.state} ({how}, reason "
            f"{state.reason or 'none'}).",
        )
    return None


def _exit_words(code: int | None) -> str:
    if code is None:
        return "exit code unknown"
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.valid_signals() else f"signal {-code}"
        return f"killed by {name}"
    return f"exit code {code}"


def _slurm_id(job: dict) -> str | None:
    state = job.get("executor_state") or {}
    return str(state["slurm_job_id"]) if state.get("slurm_job_id") else None

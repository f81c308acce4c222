"""Jobs on a lab's Slurm cluster: the GRES names, the batch script the box submits, Slurm's
end states in words, and, on a real one-node cluster on 127.0.0.1 (tests/slurm_cluster.py),
real `veri-box serve --slurm debug` processes: jobs that complete, are cancelled, outlive a
killed box, hit their time limit, wait in Slurm's queue; the box refusing a cluster it cannot
use.

Jobs run the stdlib test trainer (tests/fake_trainer.py, its behaviour set by base_model) on
the fake A100s of the cluster; one runs the real GRPO trainer on the tiny model.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tarfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from serving import FAKE_TRAINERS, KEY, VERI_BOX, Server, free_port
from slurm_cluster import PARTITION, SlurmCluster, missing

from veri_box.slurm import (
    Cluster,
    JobState,
    Node,
    Placement,
    _exit_pair,
    _wait_status,
    batch_script,
    describe_end,
    gpu_type,
    job_name,
    parse_gres,
    task_command,
)

A100 = {"type": "A100-80GB", "count": 1}
REWARD_SOURCE = "def reward(completions, **kwargs):\n    return [float('4' in c) for c in completions]\n"
ROWS = [{"prompt": "What is 2+2?", "answer": "4"}, {"prompt": "What is 3+1?", "answer": "4"}]
TERMINAL = ("completed", "failed", "cancelled")


# ---- GRES names ------------------------------------------------------------------------------


def test_gres_strings_as_sinfo_prints_them():
    assert parse_gres("gpu:a100:4(S:0-1)") == [("a100", 4)]
    assert parse_gres("gpu:a100:2,gpu:v100:2") == [("a100", 2), ("v100", 2)]
    assert parse_gres("gpu:4") == [(None, 4)]
    assert parse_gres("gpu:a100:1(IDX:0),mps:100,shard:8") == [("a100", 1)]
    assert parse_gres("gpu:nvidia_a100-sxm4-40gb:8(S:0-1)") == [("nvidia_a100-sxm4-40gb", 8)]
    assert parse_gres("(null)") == [] and parse_gres("") == []


def test_gres_types_map_to_api_types():
    assert gpu_type("a100", {}) == "A100-80GB"  # the documented short names
    assert gpu_type("H100", {}) == "H100-80GB"
    assert gpu_type("l40s", {}) == "L40S-48GB"
    assert gpu_type("a100_40g", {}) == "A100-40GB"
    # slurmd's NVML autodetection names carry the size; the family and the size are read off them.
    assert gpu_type("nvidia_a100-sxm4-40gb", {}) == "A100-40GB"
    assert gpu_type("nvidia_h100_80gb_hbm3", {}) == "H100-80GB"
    assert gpu_type("tesla_v100", {}) == "V100-32GB"  # a family alone: its usual size
    # Site names the box cannot know, and untyped `gpu:N`, need --slurm-gpu-map.
    assert gpu_type("bigcard", {}) is None
    assert gpu_type(None, {}) is None
    assert gpu_type("bigcard", {"bigcard": "B200-180GB"}) == "B200-180GB"
    assert gpu_type(None, {"gpu": "L4-24GB"}) == "L4-24GB"
    assert gpu_type("a100", {"A100": "A100-40GB"}) == "A100-40GB"  # an override wins, any case


# ---- placement on a cluster's nodes ----------------------------------------------------------


def _cluster(*nodes: Node) -> Cluster:
    cluster = Cluster(["gpu", "big"], {})
    cluster.nodes, cluster.read_at = list(nodes), time.monotonic()
    return cluster


def _node(name: str, partition: str, gpus: int, used: int = 0, state: str = "idle") -> Node:
    return Node(name, partition, "a100", "A100-80GB", gpus, used, 64, 512_000, state)


def test_cpus_and_memory_come_in_proportion_and_big_jobs_span_nodes():
    cluster = _cluster(_node("g1", "gpu", 4), _node("g2", "gpu", 4), _node("b1", "big", 8))
    assert cluster.types() == {"A100-80GB": 8}
    one = cluster.placement("A100-80GB", 1)
    assert one == Placement("big", "a100", nodes=1, gpus_per_node=1, cpus_per_node=8, memory_mb_per_node=64_000)
    assert cluster.placement("A100-80GB", 8) == Placement("big", "a100", 1, 8, 64, 512_000)
    two = _cluster(_node("g1", "gpu", 4), _node("g2", "gpu", 4))
    assert two.placement("A100-80GB", 8) == Placement("gpu", "a100", 2, 4, 64, 512_000)
    assert two.placement("A100-80GB", 6) == Placement("gpu", "a100", 2, 3, 48, 384_000)
    assert two.placement("A100-80GB", 5) is None  # not the same number on each node
    assert two.placement("A100-80GB", 12) is None and two.max_gpus("A100-80GB") == 8
    assert two.placement("H100-80GB", 1) is None


def test_availability_rows_say_what_is_idle():
    cluster = _cluster(
        _node("g1", "gpu", 4, used=4), _node("g2", "gpu", 4, used=1), _node("b1", "big", 8, state="drained")
    )
    cluster.prices = {"A100-80GB": 2.0}
    rows = {row["region"]: row for row in cluster.availability()}
    assert rows["gpu"] == {
        "provider": "slurm",
        "gpu_type": "A100-80GB",
        "region": "gpu",
        "gpu_count": 4,
        "available": 3,
        "status": "available",
        "price_per_hr": 8.0,
        "detail": "2 node(s), 2 taking jobs",
    }
    assert rows["big"]["status"] == "unavailable" and rows["big"]["available"] == 0


# ---- the batch script ------------------------------------------------------------------------


def _script(placement: Placement, bwrap: list[str] | None = None) -> str:
    job = {"id": "job_abc", "output_name": "my model"}
    task = task_command("trainers.grpo", "/data/jobs/job_abc", placement, python="/venv/bin/python")
    env = {"PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "0"}
    return batch_script(job, "/data/jobs/job_abc", placement, job_name("b0x1d", job), task, env, bwrap)


def test_the_script_of_a_one_gpu_job():
    text = _script(Placement("debug", "a100", 1, 1, 4, 16_000))
    directives = [line[len("#SBATCH ") :] for line in text.splitlines() if line.startswith("#SBATCH ")]
    assert directives == [
        "--job-name=veri-box-b0x1d-job_abc-my_model",
        "--partition=debug",
        "--nodes=1",
        "--ntasks-per-node=1",
        "--gres=gpu:a100:1",
        "--cpus-per-task=4",
        "--mem=16000M",
        "--signal=B:TERM@60",
        "--no-requeue",
        "--output=/data/jobs/job_abc/train.log",
        "--open-mode=append",
        "--chdir=/data/jobs/job_abc",
        "--export=NONE",
    ]
    assert 'exec env -i HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES-}" ' in text
    assert "/venv/bin/python -m trainers.grpo /data/jobs/job_abc" in text
    assert "accelerate" not in text and "main_process_ip" not in text
    assert 'srun --nodes=1 --ntasks-per-node=1 --kill-on-bad-exit=1 /bin/bash -c "$task" &' in text
    assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0


def test_the_script_of_a_multi_node_job():
    text = _script(Placement("debug", "a100", 2, 4, 32, 0))
    assert "#SBATCH --nodes=2\n" in text and "#SBATCH --gres=gpu:a100:4\n" in text
    assert "--mem" not in text  # a cluster that does not schedule memory is not asked for any
    assert 'main_process_ip="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"' in text
    assert (
        "/venv/bin/python -m accelerate.commands.launch --num_processes 8 --num_machines 2 "
        '--machine_rank "$SLURM_NODEID" --main_process_ip "$main_process_ip" --main_process_port 29500 '
        "-m trainers.grpo /data/jobs/job_abc"
    ) in text
    assert "srun --nodes=2 --ntasks-per-node=1" in text
    assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0


def test_the_multi_node_form_with_one_node():
    """What the one-node test cluster can run of the multi-node path: one `accelerate launch`
    per node with --num_machines 1, all of the node's GPUs as processes."""
    text = _script(Placement("debug", "a100", 1, 2, 2, 0))
    assert "accelerate.commands.launch --num_processes 2 --num_machines 1 -m trainers.grpo" in text
    assert "--machine_rank" not in text and "main_process_ip" not in text
    assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0


def test_the_sandboxed_script_finds_the_nodes_gpus_there():
    text = _script(
        Placement("debug", "a100", 1, 1, 1, 0), bwrap=["bwrap", "--unshare-all", "--ro-bind", "/usr", "/usr"]
    )
    assert 'for dev in /dev/nvidia* /dev/dri; do [ -e "$dev" ] && gpu_binds+=(--dev-bind "$dev" "$dev"); done' in text
    assert '"${gpu_binds[@]}" -- /venv/bin/python -m trainers.grpo' in text
    assert "running the trainer WITHOUT a sandbox" not in text and "WITHOUT a sandbox" in text
    assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0


# ---- Slurm's end states in words -------------------------------------------------------------


def test_exit_codes_as_slurm_reports_them():
    assert _wait_status("0") == 0 and _wait_status("1792") == 7 and _wait_status("15") == -15
    assert _wait_status(str(143 << 8)) == -15  # a shell's 128 + SIGTERM
    assert _exit_pair("0:0") == 0 and _exit_pair("1:0") == 1 and _exit_pair("0:9") == -9
    assert _exit_pair("N/A") is None


@pytest.mark.parametrize(
    ("state", "warned", "code", "words"),
    [
        ("TIMEOUT", False, "time_limit", "reached its time limit (00:01:00) after 00:01:05 on node7 and Slurm"),
        ("COMPLETED", True, "time_limit", "near its time limit (00:01:00): warned 60 s before it after 00:01:05"),
        ("NODE_FAIL", False, "node_fail", "Slurm state NODE_FAIL, killed by SIGKILL"),
        ("OUT_OF_MEMORY", False, "out_of_memory", "more host memory than Slurm allotted"),
        ("CANCELLED", False, "slurm_cancelled", "cancelled outside the box"),
        ("PREEMPTED", False, "preempted", "preempted job 42"),
        ("BOOT_FAIL", False, "slurm_failed", "with state BOOT_FAIL"),
    ],
)
def test_slurms_end_states_in_words(state, warned, code, words):
    found = describe_end(JobState("42", state, "None", -9, "node7", "00:01:05", "00:01:00"), warned)
    assert found is not None and found[0] == code and words in found[1], found
    assert "node7" in found[1] and "00:01:05" in found[1]


def test_an_ordinary_end_is_the_trainers_to_explain():
    assert describe_end(JobState("42", "COMPLETED", "None", 0)) is None
    assert describe_end(JobState("42", "FAILED", "NonZeroExitCode", 1)) is None


# ---- a real cluster --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[SlurmCluster]:
    why = missing()
    if why:
        pytest.skip(why)
    import tempfile

    # Under /tmp, not pytest's 0700 base: munged runs as its own user and must reach its socket.
    directory = Path(tempfile.mkdtemp(prefix="veri-box-slurm-"))
    saved = os.environ.get("SLURM_CONF")
    with SlurmCluster.start(directory) as running:
        os.environ.update(running.env)  # for the tests' own squeue and for every veri-box serve
        yield running
    if saved is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = saved
    shutil.rmtree(directory, ignore_errors=True)


def wait_until(predicate: Callable[[], object], timeout: float = 30, interval: float = 0.1) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def slurm_state(slurm_id: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "--oneliner", "show", "job", slurm_id], capture_output=True, text=True).stdout
    return dict(part.split("=", 1) for part in out.split() if "=" in part)


def gpus_in_use() -> int:
    out = subprocess.run(["sinfo", "-h", "-N", "-O", "GresUsed"], capture_output=True, text=True).stdout
    return sum(count for _, count in parse_gres(out.strip()))


def trainer_processes(job_dir: Path) -> list[int]:
    """Processes on this machine whose command line names the job's directory."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(job_dir).encode() in cmdline.read_bytes():
                found.append(int(cmdline.parent.name))
        except OSError:
            pass
    return [pid for pid in found if pid != os.getpid()]


class Box:
    """A started `veri-box serve --slurm debug` and an HTTP client with its key."""

    def __init__(self, base: Path, *args: str):
        base.mkdir(parents=True, exist_ok=True)
        self.server = Server(base / "data", base / "serve.log", *args)
        self.args = args

    def start(self) -> Box:
        out = self.server.start()
        if not self.server.key:
            keys = KEY.findall(out)
            assert keys, out
            self.server.key = keys[0]
        self.http = httpx.Client(
            base_url=self.server.url, headers={"Authorization": f"Bearer {self.server.key}"}, timeout=30
        )
        return self

    def stop(self) -> None:
        self.server.stop()

    def job(self, base_model: str, gpu: dict | None = None, **fields) -> str:
        body = "".join(json.dumps(r) + "\n" for r in ROWS).encode()
        r = self.http.post(
            "/v1/datasets", data={"name": "math"}, files={"file": ("m.jsonl", body, "application/jsonl")}
        )
        assert r.status_code == 200, r.text
        rf = self.http.post(
            "/v1/reward_functions", data={"name": "four"}, files={"file": ("r.py", REWARD_SOURCE.encode())}
        )
        assert rf.status_code == 200, rf.text
        body = {
            "base_model": base_model,
            "dataset_id": r.json()["id"],
            "reward_function_id": rf.json()["id"],
            "output_name": "slurm-test",
            "gpu": gpu or A100,
            **fields,
        }
        r = self.http.post("/v1/training_jobs", json=body)
        assert r.status_code == 200, r.text
        return r.json()["id"]

    def get(self, job_id: str) -> dict:
        r = self.http.get(f"/v1/training_jobs/{job_id}")
        assert r.status_code == 200, r.text
        return r.json()

    def events(self, job_id: str) -> list[dict]:
        r = self.http.get(f"/v1/training_jobs/{job_id}/events", params={"limit": 1000})
        assert r.status_code == 200, r.text
        return r.json()["items"]

    def metric_steps(self, job_id: str) -> list[int]:
        r = self.http.get(f"/v1/training_jobs/{job_id}/metrics", params={"max_points": 10_000})
        assert r.status_code == 200, r.text
        return [p["step"] for p in r.json()["metrics"] if p["values"].get("loss") is not None]

    def wait_status(self, job_id: str, status: str, timeout: float = 60) -> dict:
        job = wait_until(lambda: (j := self.get(job_id))["status"] in (status, *TERMINAL) and j, timeout)
        assert job and job["status"] == status, f"{job_id} is not {status}: {self.get(job_id)}\n{self.log(job_id)}"
        return job

    def slurm_id(self, job_id: str) -> str:
        found = wait_until(
            lambda: next(
                (e["metadata"]["slurm_job_id"] for e in self.events(job_id) if e["event_type"] == "slurm_submitted"),
                None,
            )
        )
        assert found, self.events(job_id)
        return found

    def job_dir(self, job_id: str) -> Path:
        return self.server.data_dir / "jobs" / job_id

    def log(self, job_id: str) -> str:
        path = self.job_dir(job_id) / "train.log"
        return path.read_text(errors="replace") if path.exists() else ""


@pytest.fixture
def start_box(cluster: SlurmCluster, tmp_path: Path) -> Iterator[Callable[..., Box]]:
    boxes: list[Box] = []

    def start(*extra: str, trainers: str = FAKE_TRAINERS) -> Box:
        args = ("--gpus", "none", "--cpu-slots", "0", "--slurm", PARTITION, "--trainers", trainers)
        args += ("--price-per-hour", "A100-80GB=3600", "--cancel-grace-s", "5", *extra)
        box = Box(tmp_path / f"box{len(boxes)}", *args)
        boxes.append(box)
        return box.start()

    yield start
    for box in boxes:
        box.stop()
        print(f"---- {box.server.log_path} ----\n{box.server.output()}")
    subprocess.run(["scancel", "--user=root"], capture_output=True)
    wait_until(lambda: gpus_in_use() == 0, timeout=30)


def test_a_job_on_slurm_completes_as_a_local_one_would(start_box):
    box = start_box()
    avail = box.http.get("/v1/gpu/availability").json()
    rows = [r for r in avail["availability"] if r["provider"] == "slurm"]
    assert [(r["gpu_type"], r["region"], r["gpu_count"], r["available"]) for r in rows] == [
        ("A100-80GB", PARTITION, 2, 2)
    ], avail

    job_id = box.job("fake:steps=5,step_s=0.1,save_every=2")
    slurm_id = box.slurm_id(job_id)
    job = box.wait_status(job_id, "completed")
    assert job["provider"] == "slurm"
    assert box.metric_steps(job_id) == [1, 2, 3, 4, 5]
    types = [e["event_type"] for e in box.events(job_id)]
    assert types.index("slurm_submitted") < types.index("slurm_running"), types
    assert slurm_state(slurm_id)["JobState"] == "COMPLETED"
    assert slurm_state(slurm_id)["JobName"] == f"veri-box-{_box_id(box)}-{job_id}-slurm-test"
    assert slurm_state(slurm_id)["TresPerNode"] == "gres:gpu:a100:1"
    env = json.loads((box.job_dir(job_id) / "env.json").read_text())
    assert env["argv"][1:] == [str(box.job_dir(job_id))], "the trainer ran with its job dir"
    assert env["pid"] == 1, "in bubblewrap on the node: the trainer is the init of its own PID namespace"
    assert env["CUDA_VISIBLE_DEVICES"] == "", "Slurm's (none for fake GPUs), not the box's"
    assert "veri-box: vm" in box.log(job_id) or "node 0 of 1" in box.log(job_id)
    # Cost: --price-per-hour 3600 is one dollar per GPU-second of the trainer's time.
    assert job["cost_usd"] and 0.3 <= job["cost_usd"] <= 30, job
    checkpoints = box.http.get(f"/v1/training_jobs/{job_id}/checkpoints").json()
    assert sorted(c["step"] for c in checkpoints["data"]) == [2, 4]
    archive = box.job_dir(job_id) / "model.tar.gz"
    with tarfile.open(archive) as tar:
        assert "model.bin" in tar.getnames()


def _box_id(box: Box) -> str:
    from veri_box.store import Store

    return Store(box.server.data_dir / "veri-box.db").box_value("box_id", lambda: "none")


def test_the_sdk_sees_provider_slurm(start_box):
    from veri_sdk import Client

    box = start_box()
    job_id = box.job("fake:steps=2,step_s=0.05", provider="slurm")
    box.wait_status(job_id, "completed")
    job = Client(api_key=box.server.key, base_url=box.server.url).training_jobs.get(job_id)
    assert job.provider == "slurm" and job.status == "completed"


def test_cancel_mid_run_saves_stops_and_frees_the_gpu(start_box):
    box = start_box()
    job_id = box.job("fake:steps=100000,step_s=0.1,save_every=1000")
    slurm_id = box.slurm_id(job_id)
    wait_until(lambda: len(box.metric_steps(job_id)) >= 3)
    assert box.get(job_id)["status"] == "running"
    asked = time.monotonic()
    r = box.http.post(f"/v1/training_jobs/{job_id}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
    assert wait_until(lambda: slurm_state(slurm_id).get("JobState") == "CANCELLED", timeout=40), slurm_state(slurm_id)
    assert wait_until(lambda: gpus_in_use() == 0, timeout=20)
    freed = time.monotonic() - asked
    assert wait_until(lambda: not trainer_processes(box.job_dir(job_id)), timeout=10), "no process of the job is left"
    assert "stopping: SIGTERM received" in box.log(job_id), box.log(job_id)
    assert (box.job_dir(job_id) / "checkpoints").is_dir(), "the trainer saved before it stopped"
    print(f"cancel-to-free: {freed:.1f} s")


def test_a_box_killed_mid_run_reattaches_and_loses_no_step(start_box):
    box = start_box()
    job_id = box.job("fake:steps=40,step_s=0.15")
    wait_until(lambda: len(box.metric_steps(job_id)) >= 3)
    box.server.proc.send_signal(signal.SIGKILL)
    box.server.proc.wait()
    box.server.proc = None
    time.sleep(1.5)  # the job trains on without the box
    box.start()
    job = box.wait_status(job_id, "completed", timeout=60)
    assert box.metric_steps(job_id) == list(range(1, 41)), "every step once: none lost, none doubled"
    counts = Counter(e["event_type"] for e in box.events(job_id))
    assert counts["slurm_submitted"] == 1 and counts["slurm_running"] == 1, counts
    assert job["provider"] == "slurm"


def test_a_time_limit_saves_a_checkpoint_and_fails_with_time_limit(start_box):
    """Slurm's minimum --time is a minute, and it warns (--signal B:TERM@60) at once; its time
    checks run every 30 s, so this job stops within half a minute."""
    box = start_box("--slurm-extra=--time=1")  # with "=": argparse reads a bare "--time" as a flag
    job_id = box.job("fake:steps=100000,step_s=0.1,save_every=100000")
    slurm_id = box.slurm_id(job_id)
    job = box.wait_status(job_id, "failed", timeout=100)
    assert job["error"]["code"] == "time_limit", job
    assert "near its time limit (1:00): warned 60 s before it" in job["error"]["message"], job
    assert "stopping: SIGTERM received" in box.log(job_id)
    checkpoints = box.http.get(f"/v1/training_jobs/{job_id}/checkpoints").json()
    assert checkpoints["data"], "the trainer saved on Slurm's warning"
    assert slurm_state(slurm_id)["TimeLimit"] == "00:01:00"


def test_the_pending_reason_shows_while_the_node_is_full(start_box):
    box = start_box()
    first = box.job("fake:hang=1", gpu={"type": "A100-80GB", "count": 2})
    box.slurm_id(first)
    box.wait_status(first, "running")
    second = box.job("fake:steps=2")
    pending = wait_until(lambda: [e for e in box.events(second) if e["event_type"] == "slurm_pending"])
    assert pending and pending[0]["metadata"]["reason"] in ("Resources", "Priority"), box.events(second)
    assert box.get(second)["status"] == "provisioning"
    box.http.post(f"/v1/training_jobs/{first}/cancel")
    box.wait_status(second, "completed", timeout=60)
    reasons = [e["metadata"]["reason"] for e in box.events(second) if e["event_type"] == "slurm_pending"]
    assert len(reasons) == len(set(reasons)), f"each reason once: {reasons}"


def test_a_waiting_job_is_cancelled_in_slurms_queue(start_box):
    box = start_box()
    first = box.job("fake:hang=1", gpu={"type": "A100-80GB", "count": 2})
    box.wait_status(first, "running")
    second = box.job("fake:steps=2")
    slurm_id = box.slurm_id(second)
    assert wait_until(lambda: slurm_state(slurm_id).get("JobState") == "PENDING")
    assert box.http.post(f"/v1/training_jobs/{second}/cancel").json()["status"] == "cancelled"
    assert wait_until(lambda: slurm_state(slurm_id).get("JobState") == "CANCELLED", timeout=15)
    box.http.post(f"/v1/training_jobs/{first}/cancel")


def test_a_job_cancelled_outside_the_box_fails_in_words(start_box):
    box = start_box()
    job_id = box.job("fake:steps=100000,step_s=0.1")
    slurm_id = box.slurm_id(job_id)
    box.wait_status(job_id, "running")
    subprocess.run(["scancel", slurm_id], check=True)
    job = box.wait_status(job_id, "failed", timeout=60)
    assert job["error"]["code"] == "slurm_cancelled", job
    assert f"Slurm job {slurm_id} was cancelled outside the box" in job["error"]["message"]


def test_the_box_refuses_partitions_it_does_not_know(cluster, tmp_path):
    done = subprocess.run(
        [str(VERI_BOX), "serve", "--data-dir", str(tmp_path / "d"), "--port", str(free_port()), "--slurm", "nosuch"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert f"the cluster has no partition 'nosuch'; it has: {PARTITION}" in done.stdout + done.stderr


def test_the_box_refuses_a_data_dir_the_nodes_do_not_share(cluster, tmp_path):
    """The data dir on a filesystem only the box sees: a tmpfs mounted over it in a mount
    namespace of the box's own, while slurmd sees the directory beneath."""
    data = tmp_path / "private"
    data.mkdir()
    serve = f"exec {VERI_BOX} serve --data-dir {data} --port {free_port()} --gpus none --slurm {PARTITION}"
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", f"mount -t tmpfs tmpfs {data} && {serve}"],
        capture_output=True,
        text=True,
        timeout=90,
    )
    output = done.stdout + done.stderr
    if "mount" in output and "permission denied" in output.lower():
        pytest.skip(f"no mount namespaces here: {output}")
    assert done.returncode != 0, output
    assert f"the data directory {data} is not shared with the compute nodes" in output, output


def test_the_tiny_grpo_demo_trains_on_slurm_in_its_sandbox(start_box, tmp_path):
    """The real trainer on a fake A100 (it trains on the node's CPU): metrics, rollouts,
    checkpoints and a model that loads, all written by the node into the shared job dir."""
    box = start_box(trainers="grpo=trainers.grpo")
    hyperparameters = {
        "max_steps": 4,
        "save_steps": 2,
        "rollouts_per_prompt": 2,
        "global_batch_size": 2,
        "max_response_length": 8,
        "max_prompt_length": 64,
        "learning_rate": 0.01,
    }
    job_id = box.job("veri-box/tiny-lm", hyperparameters=hyperparameters)
    job = wait_until(lambda: (j := box.get(job_id))["status"] in TERMINAL and j, timeout=400, interval=1)
    log = box.log(job_id)
    assert job and job["status"] == "completed", (job, log[-3000:])
    assert job["provider"] == "slurm" and (job["current_step"], job["total_steps"]) == (4, 4)
    assert "WITHOUT a sandbox" not in log and "node 0 of 1" in log
    metrics = box.http.get(f"/v1/training_jobs/{job_id}/metrics").json()
    assert {"loss", "reward", "kl"} <= set(metrics["available_keys"]) and metrics["latest_step"] == 4
    samples = box.http.get(f"/v1/training_jobs/{job_id}/samples", params={"step": 4}).json()["data"]
    assert samples and {"prompt", "completion", "reward"} <= set(samples[0])
    steps = sorted(c["step"] for c in box.http.get(f"/v1/training_jobs/{job_id}/checkpoints").json()["data"])
    assert steps == [2, 4]
    model_dir = tmp_path / "model"
    with tarfile.open(box.job_dir(job_id) / "model.tar.gz") as tar:
        tar.extractall(model_dir, filter="data")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    out = model.generate(**tokenizer("Say a", return_tensors="pt"), max_new_tokens=4, do_sample=False)
    assert out.shape[1] > len(tokenizer("Say a")["input_ids"])

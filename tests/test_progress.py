"""trainers/progress.py and trainers/contract.py, the trainer side of the contract with the
server, and the fake trainer that the server's supervision tests launch in place of a real one."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from trainers import progress as progress_module
from trainers.contract import (
    ConfigError,
    DatasetConfig,
    Devices,
    JobConfig,
    OpenRewardConfig,
    RewardFunctionConfig,
    write_config,
)
from trainers.errors import TrainerError
from trainers.progress import Progress, load_config, log

ROOT = Path(__file__).resolve().parent.parent


def records(job_dir: Path) -> list[dict]:
    text = (job_dir / "progress.jsonl").read_text(encoding="utf-8")
    assert text == "" or text.endswith("\n"), "the last record is unterminated"
    # parse_constant rejects NaN/Infinity: the server's JSON parser would too.
    return [
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}")) for line in text.splitlines()
    ]


def without_time(record: dict) -> dict:
    assert isinstance(record.pop("time"), float)
    return record


# ---- record shapes ----------------------------------------------------------------------------


def test_every_record_is_one_json_line_with_its_shape(tmp_path: Path):
    before = time.time()
    with Progress(tmp_path) as progress:
        progress.started(total_steps=10, model="tiny")
        progress.event("dataset_loaded", rows=3)
        progress.metrics(1, {"loss": 0.5, "reward": 2})
        progress.sample(1, prompt="p", completion="c", reward=1.0, rewards={"len": 1.0}, advantage=-0.5)
        progress.checkpoint(1, tmp_path / "checkpoints" / "step-1")
        progress.error("out_of_memory", "CUDA out of memory")
        progress.completed(steps=10)
    got = records(tmp_path)
    assert all(before <= r["time"] <= time.time() for r in got)
    assert [without_time(r) for r in got] == [
        {"type": "event", "event": "running", "total_steps": 10, "metadata": {"model": "tiny"}},
        {"type": "event", "event": "dataset_loaded", "metadata": {"rows": 3}},
        {"type": "metrics", "step": 1, "values": {"loss": 0.5, "reward": 2.0}},
        {
            "type": "sample",
            "step": 1,
            "prompt": "p",
            "completion": "c",
            "reward": 1.0,
            "rewards": {"len": 1.0},
            "advantage": -0.5,
        },
        {"type": "checkpoint", "step": 1, "path": "checkpoints/step-1"},
        {"type": "error", "code": "out_of_memory", "message": "CUDA out of memory"},
        {"type": "event", "event": "completed", "metadata": {"steps": 10}},
    ]


def test_started_without_a_step_count(tmp_path: Path):
    Progress(tmp_path).started()
    assert without_time(records(tmp_path)[0]) == {
        "type": "event",
        "event": "running",
        "total_steps": None,
        "metadata": {},
    }


def test_ints_become_floats(tmp_path: Path):
    Progress(tmp_path).metrics(3, {"tokens": 7})
    (record,) = records(tmp_path)
    assert record["values"] == {"tokens": 7.0} and isinstance(record["values"]["tokens"], float)


def test_each_record_is_a_single_write(tmp_path: Path):
    progress = Progress(tmp_path)
    calls = []
    real = progress._file

    class Counting:
        def write(self, data):
            calls.append(bytes(data))
            return real.write(data)

    progress._file = Counting()
    progress.sample(5, prompt="x" * 100_000, completion="é" * 1000)
    assert len(calls) == 1 and calls[0].endswith(b"\n") and calls[0].count(b"\n") == 1
    # On disk at once, with no close or flush.
    assert records(tmp_path)[0]["completion"] == "é" * 1000


def test_appends_to_an_existing_file(tmp_path: Path):
    (tmp_path / "progress.jsonl").write_text('{"type": "event", "event": "running", "metadata": {}, "time": 1.0}\n')
    Progress(tmp_path).completed()
    assert [r["event"] for r in records(tmp_path)] == ["running", "completed"]


def test_concurrent_writers_never_tear_a_line(tmp_path: Path):
    """Ranks of one job may each append; O_APPEND single writes keep every line whole."""
    script = (
        "import sys; from trainers.progress import Progress\n"
        "p = Progress(sys.argv[1])\n"
        "for i in range(200): p.sample(i, writer=sys.argv[2], text=sys.argv[2] * 20000)\n"
    )
    writers = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path), name], cwd=ROOT) for name in "abcd"]
    assert [w.wait(timeout=60) for w in writers] == [0, 0, 0, 0]
    got = records(tmp_path)
    assert len(got) == 800
    assert all(r["text"] == r["writer"] * 20000 for r in got)


# ---- metrics values ---------------------------------------------------------------------------


def test_non_finite_values_are_dropped_with_one_warning_per_key(tmp_path: Path, capsys):
    progress = Progress(tmp_path)
    bad = {"nan": math.nan, "inf": math.inf, "ninf": -math.inf, "none": None, "flag": True, "text": "0.5"}
    progress.metrics(1, {"loss": 0.25, **bad})
    progress.metrics(2, {"loss": 0.125, **bad})
    assert [(r["step"], r["values"]) for r in records(tmp_path)] == [(1, {"loss": 0.25}), (2, {"loss": 0.125})]
    err = capsys.readouterr().err
    for key in bad:
        assert len(re.findall(rf"metric '{key}' at step 1 ", err)) == 1, err
    assert "step 2" not in err and "loss" not in err


def test_nothing_is_written_when_no_value_survives(tmp_path: Path, capsys):
    progress = Progress(tmp_path)
    progress.metrics(1, {"loss": math.nan})
    progress.metrics(2, {})
    assert records(tmp_path) == []
    assert "'loss'" in capsys.readouterr().err


# ---- samples and paths --------------------------------------------------------------------------


def test_sample_values_become_strict_json(tmp_path: Path):
    class Opaque:
        def __str__(self):
            return "opaque!"

    progress = Progress(tmp_path)
    progress.sample(
        1,
        prompt="p",
        reward=math.nan,
        rewards=[1.0, math.inf, 2],
        extra=Opaque(),
        video=tmp_path / "samples" / "step-1.mp4",
        elsewhere=Path("/not/in/job"),
    )
    (record,) = records(tmp_path)
    assert record["reward"] is None and record["rewards"] == [1.0, None, 2]
    assert record["extra"] == "opaque!"
    assert record["video"] == "samples/step-1.mp4"  # paths inside the job dir are stored relative
    assert record["elsewhere"] == "/not/in/job"


def test_sample_fields_cannot_shadow_the_record_keys(tmp_path: Path):
    with pytest.raises(ValueError, match="type"):
        Progress(tmp_path).sample(1, type="video")


def test_checkpoint_paths_are_relative_to_the_job_dir(tmp_path: Path, monkeypatch):
    job = tmp_path / "job"
    job.mkdir()
    progress = Progress(job)
    progress.checkpoint(1, job / "checkpoints" / "step-1")  # absolute
    progress.checkpoint(2, "checkpoints/step-2")  # relative to the job dir
    monkeypatch.chdir(tmp_path)
    progress.checkpoint(3, "job/checkpoints/step-3")  # relative to the current directory
    assert [r["path"] for r in records(job)] == ["checkpoints/step-1", "checkpoints/step-2", "checkpoints/step-3"]
    with pytest.raises(ValueError, match="not inside the job directory"):
        progress.checkpoint(4, tmp_path / "elsewhere")


# ---- config.json ----------------------------------------------------------------------------------

# Every key the server's runner writes today; a trainer built on the contract must read them all.
SERVER_KEYS = {
    "job_id",
    "method",
    "trainer",
    "base_model",
    "output_name",
    "dataset",
    "reward_functions",
    "environments",
    "openreward",
    "hyperparameters",
    "seed",
    "devices",
    "job_dir",
    "output_dir",
    "models_dir",
    "checkpoints_dir",
    "resume_from",
    "wandb",
}


def job_config(job_dir: Path, **fields) -> JobConfig:
    """A complete config as the runner resolves it, with `fields` replaced."""
    config = JobConfig(
        job_id="job_abc",
        method="grpo",
        trainer="trainers.grpo",
        base_model="Qwen/Qwen3-0.6B",
        output_name="ratio",
        dataset=DatasetConfig(
            id="ds_1", format="prompt_only", columns=["prompt", "answer"], num_rows=3, path="/data/ds_1/rows.jsonl"
        ),
        reward_functions=[
            RewardFunctionConfig(id="rf_1", name="ratio", entrypoint="reward", path="/jobs/rf_1.py", weight=0.5)
        ],
        environments={"owner/math": {"splits": ["train"]}},
        openreward=OpenRewardConfig(
            api_key="key", base_url="http://ors", session_url="http://ors/s", api_url="http://ors/api"
        ),
        hyperparameters={"seed": 42, "learning_rate": 1e-5, "max_steps": None},
        seed=42,
        devices=Devices(type="cpu", count=1, indices=[0]),
        job_dir=str(job_dir),
        output_dir=str(job_dir / "output"),
        models_dir="/data/models",
        checkpoints_dir=str(job_dir / "checkpoints"),
    )
    return replace(config, **fields)


def written(job_dir: Path) -> dict:
    return json.loads((job_dir / "config.json").read_text(encoding="utf-8"))


def test_a_written_config_loads_back_as_the_same_typed_config(tmp_path: Path):
    config = job_config(tmp_path)
    write_config(tmp_path, config)
    assert not (tmp_path / "config.json.tmp").exists()
    assert set(written(tmp_path)) == SERVER_KEYS
    loaded = load_config(str(tmp_path))
    assert loaded == config
    assert loaded.dataset.path == "/data/ds_1/rows.jsonl" and loaded.reward_functions[0].weight == 0.5
    assert loaded.openreward.api_key == "key" and loaded.devices.indices == [0]


def test_a_config_without_openreward_or_environments(tmp_path: Path):
    config = job_config(tmp_path, openreward=None, environments=None, reward_functions=[], seed=None)
    write_config(tmp_path, config)
    assert load_config(tmp_path) == config


def test_the_servers_plain_dict_reads_the_same(tmp_path: Path):
    """The runner writes config.json from a dict today: same keys, same typed result."""
    config = job_config(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
    assert load_config(tmp_path) == config
    assert JobConfig.from_dict(config.to_dict()).to_dict() == config.to_dict()


def test_unknown_keys_are_ignored(tmp_path: Path):
    """A newer server may write more than this trainer knows."""
    data = {**job_config(tmp_path).to_dict(), "priority": "high"}
    data["dataset"]["checksum"] = "abc"
    data["devices"]["memory_gib"] = 80
    data["reward_functions"][0]["timeout_s"] = 5
    (tmp_path / "config.json").write_text(json.dumps(data))
    assert load_config(tmp_path) == job_config(tmp_path)


@pytest.mark.parametrize(
    ("path", "named"),
    [
        (("base_model",), "base_model"),
        (("dataset", "path"), "dataset.path"),
        (("devices", "indices"), "devices.indices"),
        (("openreward", "api_url"), "openreward.api_url"),
        (("reward_functions", 0, "weight"), "reward_functions[0].weight"),
    ],
)
def test_a_missing_key_is_an_error_naming_it(tmp_path: Path, path: tuple, named: str):
    data = job_config(tmp_path).to_dict()
    parent = data
    for key in path[:-1]:
        parent = parent[key]
    del parent[path[-1]]
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=rf"config\.json is missing {re.escape(named)}\b"):
        load_config(tmp_path)


def test_a_part_that_is_not_an_object_is_an_error_naming_it(tmp_path: Path):
    data = {**job_config(tmp_path).to_dict(), "devices": [0]}
    with pytest.raises(ConfigError, match="devices must be a JSON object"):
        JobConfig.from_dict(data)


# ---- run(): the main() of every trainer ------------------------------------------------------------


@pytest.fixture
def sigterm_restored():
    """run() installs the trainer's SIGTERM handler; give pytest its own back afterwards."""
    previous = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, previous)


def test_run_hands_train_the_typed_config_and_returns_its_exit_code(tmp_path: Path, sigterm_restored):
    write_config(tmp_path, job_config(tmp_path))
    seen = []

    def train(config: JobConfig, progress: Progress) -> int:
        seen.append(config)
        progress.completed(steps=1)
        return 0

    assert progress_module.run(str(tmp_path), train) == 0
    assert seen == [job_config(tmp_path)]
    assert [r.get("event") for r in records(tmp_path)] == ["completed"]
    assert signal.getsignal(signal.SIGTERM) is progress_module._on_sigterm


def test_run_turns_a_trainer_error_into_an_error_record_and_exit_code_1(tmp_path: Path, sigterm_restored, capsys):
    write_config(tmp_path, job_config(tmp_path))

    def train(config: JobConfig, progress: Progress) -> int:
        progress.started(total_steps=3)
        raise TrainerError("dataset_format_incompatible", "GRPO needs prompts; a text dataset has none.")

    assert progress_module.run(tmp_path, train) == 1
    assert without_time(records(tmp_path)[-1]) == {
        "type": "error",
        "code": "dataset_format_incompatible",
        "message": "GRPO needs prompts; a text dataset has none.",
    }
    assert "error (dataset_format_incompatible): GRPO needs prompts" in capsys.readouterr().out


def test_run_on_a_rank_other_than_0_reports_nothing(tmp_path: Path, sigterm_restored, monkeypatch):
    """Every rank of a multi-GPU job trains; their records would repeat rank 0's."""
    monkeypatch.setenv("RANK", "1")
    write_config(tmp_path, job_config(tmp_path))

    def train(config: JobConfig, progress: Progress) -> int:
        progress.metrics(1, {"loss": 0.5})
        raise TrainerError("interrupted", "stopped")

    assert progress_module.run(tmp_path, train) == 1
    assert not (tmp_path / "progress.jsonl").exists()


def test_run_lets_other_exceptions_through(tmp_path: Path, sigterm_restored):
    """A bug is a traceback on stderr (the server reports the log's tail), not an error record."""
    write_config(tmp_path, job_config(tmp_path))

    def train(config: JobConfig, progress: Progress) -> int:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        progress_module.run(tmp_path, train)
    assert records(tmp_path) == []


def test_log_prefixes_a_utc_timestamp(capsys):
    log("step 1 loss 0.5")
    line = capsys.readouterr().out
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d step 1 loss 0\.5\n", line)
    stamp = time.strptime(line[:19], "%Y-%m-%d %H:%M:%S")
    assert abs(time.mktime(stamp) - time.mktime(time.gmtime())) < 5


# ---- SIGTERM and the import boundary, in fresh interpreters ---------------------------------------


def python(code: str, *args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60, cwd=ROOT, **kw
    )


def test_sigterm_sets_the_stop_flag_instead_of_killing():
    result = python(
        "import os, signal, time\n"
        "from trainers.progress import install_sigterm_handler, stop_requested\n"
        "install_sigterm_handler()\n"
        "print(stop_requested())\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "deadline = time.monotonic() + 10\n"
        "while not stop_requested() and time.monotonic() < deadline: time.sleep(0.01)\n"
        "print(stop_requested())\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "True"]


def test_importing_progress_loads_only_the_standard_library():
    result = python(
        "import json, sys, time\n"
        "before = set(sys.modules)\n"
        "start = time.perf_counter()\n"
        "import trainers.progress\n"
        "seconds = time.perf_counter() - start\n"
        "print(json.dumps({'new': sorted(set(sys.modules) - before), 'all': sorted(sys.modules), 's': seconds}))\n"
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    forbidden = ("numpy", "torch", "transformers", "litestar", "msgspec", "veri_box")
    assert [m for m in out["all"] if m.split(".")[0] in forbidden] == []
    outside_stdlib = [m for m in out["new"] if m.split(".")[0] not in sys.stdlib_module_names | {"trainers"}]
    assert outside_stdlib == []
    # Measured at a few ms; the bound only catches something heavy slipping in.
    assert out["s"] < 0.25


# ---- the fake trainer --------------------------------------------------------------------------


def run_fake(job_dir: Path, base_model: str, **config) -> subprocess.CompletedProcess:
    """As the runner starts a trainer: `python -m MODULE JOB_DIR`, from outside the repo."""
    job_dir.mkdir(parents=True, exist_ok=True)
    write_config(job_dir, job_config(job_dir, base_model=base_model, **config))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "tests.fake_trainer", str(job_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=job_dir,
        env=env,
    )


def test_fake_trainer_runs_to_completion(tmp_path: Path):
    job = tmp_path / "job"
    output = tmp_path / "job" / "output"
    result = run_fake(job, "fake:steps=3,save_every=2", output_dir=str(output))
    assert result.returncode == 0, result.stderr
    got = records(job)
    assert got[0]["type"] == "event" and got[0]["event"] == "running" and got[0]["total_steps"] == 3
    assert [r["step"] for r in got if r["type"] == "metrics"] == [1, 2, 3]
    assert [r["values"]["loss"] for r in got if r["type"] == "metrics"] == [1 / 2, 1 / 3, 1 / 4]
    assert [(r["step"], r["prompt"]) for r in got if r["type"] == "sample"] == [(1, "p1"), (2, "p2"), (3, "p3")]
    assert [(r["step"], r["path"]) for r in got if r["type"] == "checkpoint"] == [(2, "checkpoints/step-2")]
    assert (job / "checkpoints" / "step-2" / "weights.bin").is_file()
    assert got[-1]["type"] == "event" and got[-1]["event"] == "completed"
    assert json.loads((output / "config.json").read_text()) == {"fake": True}
    assert (output / "model.bin").stat().st_size == 1024
    assert re.search(r"^\S+ \S+ step 3 loss 0\.2500$", result.stdout, re.M)
    env = json.loads((job / "env.json").read_text())
    assert env["pid"] > 0 and env["argv"][1:] == [str(job)]


def test_fake_trainer_crash(tmp_path: Path):
    job = tmp_path / "job"
    result = run_fake(job, "fake:steps=5,crash_at=2")
    assert result.returncode == 1
    assert "RuntimeError: boom at step 2" in result.stderr
    got = records(job)
    assert [r["step"] for r in got if r["type"] == "metrics"] == [1]
    assert not [r for r in got if r["type"] == "error"]
    assert not (job / "output").exists()


def test_fake_trainer_reported_error(tmp_path: Path):
    result = run_fake(tmp_path, "fake:error_at=2,error_code=dataset_invalid")
    assert result.returncode == 1
    assert without_time(records(tmp_path)[-1]) == {
        "type": "error",
        "code": "dataset_invalid",
        "message": "trainer reported dataset_invalid at step 2",
    }


def test_fake_trainer_out_of_memory(tmp_path: Path):
    result = run_fake(tmp_path, "fake:oom_at=1")
    assert result.returncode == 1
    assert "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB." in result.stderr
    assert [r["type"] for r in records(tmp_path)] == ["event"]


def test_fake_trainer_rejects_unknown_options(tmp_path: Path):
    result = run_fake(tmp_path, "fake:stpes=3")
    assert result.returncode == 1 and "bad option 'stpes=3'" in result.stderr


def test_fake_trainer_saves_and_stops_on_sigterm(tmp_path: Path):
    write_config(tmp_path, job_config(tmp_path, base_model="fake:hang=1,save_every=5"))
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.fake_trainer", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "progress.jsonl").exists() or not records(tmp_path):
            assert time.monotonic() < deadline and child.poll() is None
            time.sleep(0.02)
        child.send_signal(signal.SIGTERM)
        out, err = child.communicate(timeout=30)
    finally:
        child.kill()
    assert child.returncode == 0, err
    assert "stopping: SIGTERM received" in out
    assert [(r["type"], r.get("step")) for r in records(tmp_path)] == [("event", None), ("checkpoint", 0)]

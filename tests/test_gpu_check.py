"""bench/gpu_check.py --cpu end to end: the device's one prepared script keeps working between the
rare tasks lent a GPU. Same code paths as on the GPU (server, API, demo jobs, the box's trainer
against bare TRL, deployments of the demo job's model and chats through the box, the video step),
tiny shapes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PHASES = ("demo", "grpo", "deploy", "video", "oom")


def test_gpu_check_cpu_run_reports_every_phase(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu_check.py"), "--cpu", "--budget", "240", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=290,
        cwd=REPO,
    )
    report = json.loads((out / "gpu_check.json").read_text())
    phases = report["phases"]
    detail = result.stdout[-3000:] + result.stderr[-3000:] + json.dumps(phases, indent=1)[-6000:]
    assert result.returncode == 0, detail
    assert set(PHASES) <= set(phases), detail
    for name in PHASES:
        assert phases[name]["status"] in ("ok", "skipped"), detail
        if phases[name]["status"] == "skipped":
            assert phases[name]["reason"], detail

    demo = phases["demo"]
    assert demo["status"] == "ok" and demo["gpu_type"] == "cpu" and demo["sandbox"] in ("bwrap", "none"), detail
    for job in demo["jobs"].values():
        assert job["status"] == "completed" and job["steps"] > 0 and job["samples"] > 0, detail
        assert job["archive_bytes"] > 0 and job["model_files"] > 0, detail

    modes = phases["grpo"]["modes"]
    for mode in ("full", "lora"):
        assert modes[mode]["status"] == "ok", detail
        assert modes[mode]["ratio_box_over_bare"] > 0, detail
        assert modes[mode]["box"]["step_s_median"] > 0 and modes[mode]["bare"]["step_s_median"] > 0, detail
    assert modes["qlora"]["status"] == "skipped" and "CUDA" in modes["qlora"]["reason"], detail
    deploy = phases["deploy"]
    assert deploy["status"] == "ok" and deploy["gpu_type"] == "cpu", detail
    targets = deploy["targets"]
    assert targets["demo_job"]["source"] == "training_job", detail  # the demo's GRPO job, as a user deploys it
    for name, target in targets.items():
        if name != "demo_job" and target["status"] == "skipped":
            continue
        assert target["status"] == "ok" and target["engine"] == "transformers", detail  # vLLM serves GPUs only
        assert target["serving_device"] == "cpu" and target["free_before"] == 1, detail
        assert target["free_while_serving"] == 0, detail  # the deployment holds the cpu slot
        assert 0 < target["create_to_serving_s"] < 60 and target["ttft_ms_median"] > 0, detail
        assert target["tokens_per_s_median"] > 0 and min(target["completion_tokens"]) > 0, detail
        assert target["requests_per_s"] > 0 and target["concurrent_errors"] == 0, detail
        assert target["total_requests"] == target["concurrent_requests"] + 1 + target["stream_requests"], detail
        assert target["peak_gib"] > 0, detail
        assert target["device_freed"] and 0 < target["stop_to_free_s"] < 30, detail
        assert target["final_status"] == "stopped", detail
    assert phases["video"]["shapes"]["tiny"]["status"] == "ok", detail
    assert phases["oom"]["status"] == "skipped", detail

    rows = [json.loads(line) for line in (out / "memory_fit.jsonl").read_text().splitlines()]
    assert {(r["method"], r["trainer"]) for r in rows} == {
        ("full", "box"),
        ("full", "bare"),
        ("lora", "box"),
        ("lora", "bare"),
    }
    for row in rows:
        assert row["model_params"] > 0 and row["completions"] == 16 and row["tokens"] == 16 and row["peak_gib"] > 0
    table = (out / "gpu_check.md").read_text()
    assert "| GRPO |" in table and "| demo | ok |" in table and "| demo_job | " in table, table

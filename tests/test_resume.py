"""`resume_from` on create: a job that starts from another job's checkpoint (weights, optimizer
state, step), refused plainly when it cannot; real tiny GRPO and CogVideoX resumes on the cpu
pool; and the dashboard's "Resume from here"."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import Api, finished, run_until
from test_dashboard import Browser, form_for

from trainers.tiny_video import squares_zip
from veri_box import demo

# The demo's settings (the tiny model learns within 30 steps), with a checkpoint every 10.
GRPO = {**demo.HYPERPARAMETERS, "seed": 0, "save_steps": 10}
VIDEO = {
    "num_frames": 9,
    "height": 32,
    "width": 32,
    "lora_rank": 4,
    "lora_alpha": 16,
    "learning_rate": 2e-3,
    "max_steps": 4,
    "save_steps": 2,
    "validation_prompts": ["a red square moving right"],
    "seed": 0,
}


def checkpoint(api: Api, job_id: str, step: int, files: bool = True) -> str:
    """A checkpoint row of the job, with a file in its folder unless `files` is False."""
    folder = api.settings.data_dir / "jobs" / job_id / "checkpoints" / f"checkpoint-{step}"
    if files:
        folder.mkdir(parents=True)
        (folder / "adapter_model.safetensors").write_bytes(b"x")
    return api.store.add_checkpoint(job_id, step, f"checkpoints/checkpoint-{step}")["id"]


def create(api: Api, **body):
    return api.post("/v1/training_jobs", json=body)


def refused(api: Api, code: str, words: list[str], **body) -> None:
    before = len(api.store.list_jobs(100, None)[0])
    r = create(api, **body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    param = "hyperparameters.max_steps" if code == "invalid_hyperparameter" else "resume_from"
    assert (error["code"], error["param"]) == (code, param)
    assert all(w in error["message"] for w in words), error["message"]
    assert len(api.store.list_jobs(100, None)[0]) == before  # nothing written


# ---- submit-time checks (no trainer runs) ------------------------------------------------------


@pytest.fixture
def source(api: Api) -> dict:
    """A LoRA grpo job with a checkpoint at step 10."""
    job = api.job(hyperparameters={"lora_rank": 8, "max_steps": 30})
    job["checkpoint"] = checkpoint(api, job["id"], 10)
    return job


def resumed_body(source: dict, **changes) -> dict:
    body = {
        "base_model": source["base_model"],
        "dataset_id": source["dataset_id"],
        "gpu": {"type": "cpu"},
        "hyperparameters": {"lora_rank": 8, "max_steps": 30},
        "resume_from": source["checkpoint"],
    }
    return {**body, **changes}


def test_a_resumed_job_records_its_checkpoint_and_keeps_the_reward(api, source):
    for value in (source["checkpoint"], f"{source['id']}@10"):
        r = create(api, **resumed_body(source, resume_from=value))
        assert r.status_code == 200, r.text
        job = api.store.get_job(r.json()["id"])
        assert job["resume_from"] == source["checkpoint"]
        # the job says where it started, `job_id@step` resolved to the checkpoint's id
        assert r.json()["resume_from"] == api.get(f"/v1/training_jobs/{job['id']}").json()["resume_from"]
        assert r.json()["resume_from"] == source["checkpoint"]
        assert job["reward_functions"] == [{"id": source["reward_function_id"], "weight": 1.0}]
    own = api.reward_function(name="own")
    r = create(api, **resumed_body(source, reward_function_id=own))
    assert r.json()["reward_function_id"] == own  # a reward of its own replaces the source's


@pytest.mark.parametrize(
    "change, code, words",
    [
        ({"resume_from": "ckpt_nope"}, "checkpoint_not_found", ["ckpt_nope", "/checkpoints"]),
        ({"resume_from": "job_nope@10"}, "checkpoint_not_found", ["job_nope"]),
        ({"resume_from": "@10"}, "checkpoint_not_found", ["''"]),
        ({"base_model": "Qwen/Qwen3-0.6B"}, "resume_incompatible", ["Qwen/Qwen3-4B", "base_model"]),
        ({"hyperparameters": {"lora_rank": 16, "max_steps": 30}}, "resume_incompatible", ["lora_rank 8", "16"]),
        ({"hyperparameters": {"lora_rank": 8, "lora_alpha": 8}}, "resume_incompatible", ["lora_alpha 16"]),
        ({"hyperparameters": {"max_steps": 30}}, "resume_incompatible", ["a LoRA", "lora_rank 8"]),
        ({"hyperparameters": {"lora_rank": 8, "max_steps": 10}}, "invalid_hyperparameter", ["max_steps 10"]),
    ],
)
def test_refused_resumes_say_what_to_do_and_write_nothing(api, source, change, code, words):
    refused(api, code, words, **resumed_body(source, **change))


def test_a_step_without_a_checkpoint_lists_the_steps_there_are(api, source):
    refused(
        api,
        "checkpoint_not_found",
        ["no checkpoint at step 7", "10"],
        **resumed_body(source, resume_from=f"{source['id']}@7"),
    )


def test_a_checkpoint_whose_files_are_gone(api, source):
    gone = checkpoint(api, source["id"], 20, files=False)
    refused(api, "checkpoint_not_found", [gone, "are gone"], **resumed_body(source, resume_from=gone))


def test_a_full_fine_tune_does_not_resume_a_lora(api):
    full = api.job(hyperparameters={"max_steps": 30})
    ckpt = checkpoint(api, full["id"], 10)
    body = {**resumed_body({**full, "checkpoint": ckpt}), "hyperparameters": {"lora_rank": 8}}
    refused(api, "resume_incompatible", ["the full model"], **body)


def test_other_methods_and_video_shapes_are_incompatible(api, source):
    r = api.upload_dataset(squares_zip(n=2, frames=17), filename="clips.zip", name="squares")
    clips = r.json()["id"]
    video = {
        "method": "sft_video_gen",
        "base_model": "THUDM/CogVideoX-2b",
        "dataset_id": clips,
        "hyperparameters": {**VIDEO, "max_steps": 8},
    }
    refused(api, "resume_incompatible", ["grpo job", "method 'grpo'"], **resumed_body(source, **video))
    job = create(api, **resumed_body(source, **video, resume_from=None)).json()
    ckpt = checkpoint(api, job["id"], 2)
    for key, value in (("num_frames", 17), ("height", 48), ("lora_rank", 8)):
        body = {**video, "resume_from": ckpt}
        body["hyperparameters"] = {**VIDEO, "max_steps": 8, key: value}
        refused(api, "resume_incompatible", [key], **resumed_body(source, **body))
    ok = create(api, **resumed_body(source, **video, resume_from=ckpt))
    assert ok.status_code == 200, ok.text


def test_a_config_json_of_an_older_server_starts_from_the_base_model(tmp_path):
    from trainers.contract import JobConfig, read_config

    r = {"id": "rf", "name": "n", "entrypoint": "reward", "path": "/rf.py", "weight": 1.0}
    data = {
        "job_id": "job_1",
        "method": "grpo",
        "trainer": "trainers.grpo",
        "base_model": "m",
        "output_name": "o",
        "dataset": {"id": "ds", "format": "prompt_only", "columns": ["prompt"], "num_rows": 1, "path": "/d"},
        "reward_functions": [r],
        "environments": None,
        "openreward": None,
        "hyperparameters": {},
        "seed": 0,
        "devices": {"type": "cpu", "count": 1, "indices": []},
        "job_dir": "/j",
        "output_dir": "/j/output",
        "models_dir": "/models",
        "checkpoints_dir": "/j/checkpoints",
    }
    (tmp_path / "config.json").write_text(json.dumps(data))
    assert read_config(tmp_path).resume_from is None
    assert JobConfig.from_dict({**data, "resume_from": "/j/resume/checkpoint-10"}).resume_from.endswith("-10")


# ---- the dashboard ---------------------------------------------------------------------------


def test_resume_from_here_prefills_the_form_and_submits_a_resumed_job(api):
    web = Browser(api)
    dataset, rf = api.dataset(), api.reward_function()
    r = web.post("/jobs/new", data=form_for(web, dataset, rf, lora_rank="8", max_steps="30"))
    job_id = r.headers["HX-Redirect"].removeprefix("/jobs/")
    assert "resume-job" not in web.get(f"/jobs/{job_id}").text  # no checkpoint yet
    ckpt = checkpoint(api, job_id, 10)
    assert "Resume from here" not in web.get(f"/jobs/{job_id}").text  # not while it runs
    api.post(f"/v1/training_jobs/{job_id}/cancel")
    page = web.get(f"/jobs/{job_id}").text
    link = re.search(r'id="resume-job" href="([^"]+)"', page).group(1).replace("&amp;", "&")
    assert link == f"/jobs/new?clone={job_id}&resume_from={ckpt}"

    form_page = web.get(link).text
    assert f'name="resume_from" class="mono" value="{ckpt}"' in form_page and "resuming" in form_page
    assert 'name="hp.lora_rank" value="8"' in form_page and 'value="from-form-resumed"' in form_page
    form = dict(re.findall(r'<input[^>]*name="([^"]+)"[^>]*value="([^"]*)"', form_page))
    form.update(method="grpo", dataset_id=dataset, gpu_type="cpu", reward_function_ids=rf)
    r = web.post("/jobs/new", data=form)
    assert "HX-Redirect" in r.headers, r.text
    resumed = api.store.get_job(r.headers["HX-Redirect"].removeprefix("/jobs/"))
    assert resumed["resume_from"] == ckpt and resumed["hyperparameters"]["lora_rank"] == 8
    assert f'href="/jobs/{job_id}">{job_id}</a> step 10' in web.get(f"/jobs/{resumed['id']}").text

    form["hp.lora_rank"] = "4"  # the API's own refusal, shown beside the field
    r = web.post("/jobs/new", data=form)
    assert 'data-code="resume_incompatible"' in r.text and 'id="err-resume_from"' in r.text


def test_a_resumed_grpo_sampler_takes_the_epoch_order_of_the_straight_run():
    """trl_compat.replayable on TRL's own RepeatSampler: set_epoch(e) gives the order an
    uninterrupted run takes in epoch e, whatever the sampler drew before."""
    from trl.trainer.utils import RepeatSampler

    from trainers import trl_compat

    def sampler():
        return trl_compat.replayable(RepeatSampler(list(range(7)), mini_repeat_count=2, batch_size=3, seed=0))

    straight = sampler()
    orders = []
    for epoch in range(3):
        straight.set_epoch(epoch)
        orders.append(list(straight))
    assert orders[0] != orders[2]
    plain = RepeatSampler(list(range(7)), mini_repeat_count=2, batch_size=3, seed=0)
    assert [list(plain) for _ in range(3)] == orders  # an uninterrupted run's orders are unchanged
    resumed = sampler()
    resumed.set_epoch(2)
    assert list(resumed) == orders[2]


# ---- real resumes ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from trainers.tiny import build_tiny_lm

    return build_tiny_lm(tmp_path_factory.mktemp("tiny") / "model", seed=0)


def rewards(api: Api, job_id: str) -> dict[int, float]:
    points = api.get(f"/v1/training_jobs/{job_id}/metrics?keys=reward&max_points=1000").json()["metrics"]
    return {p["step"]: p["values"]["reward"] for p in points}


def test_a_cancelled_grpo_job_resumes_from_its_checkpoint_to_the_straight_runs_end(box, tiny_model):
    dataset = box.dataset([{"prompt": p, "answer": "a"} for p in demo.PROMPTS])
    rf = box.reward_function(demo.REWARD, name="a_ratio")
    body = {"base_model": str(tiny_model), "dataset_id": dataset, "hyperparameters": GRPO, "output_name": "a"}

    straight = finished(box, box.job(**body, reward_function_id=rf)["id"])
    assert straight["status"] == "completed", straight["error"]

    cancelled = box.job(**body, reward_function_id=rf)["id"]
    run_until(box, lambda: any(c["step"] == 10 for c in box.store.list_checkpoints(cancelled)), timeout=300)
    box.post(f"/v1/training_jobs/{cancelled}/cancel")
    run_until(box, lambda: not box.store.jobs_holding_devices(), timeout=30)
    assert box.store.get_job(cancelled)["status"] == "cancelled"
    on_cancel = box.get(f"/v1/training_jobs/{cancelled}/checkpoints").json()["data"][0]  # saved on SIGTERM
    resumable = {"adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json", "rng_state.pth"}
    assert resumable <= {f["path"] for f in on_cancel["files"]}, on_cancel

    r = box.post("/v1/training_jobs", json={**body, "gpu": {"type": "cpu"}, "resume_from": f"{cancelled}@10"})
    assert r.status_code == 200, r.text
    assert r.json()["reward_function_id"] == rf  # the source job's reward, none given
    job = finished(box, r.json()["id"])
    log = box.get(f"/v1/training_jobs/{job['id']}/logs/full").text
    assert job["status"] == "completed", (job["error"], log[-3000:])
    assert (job["current_step"], job["total_steps"]) == (30, 30)
    assert "resuming from" in log and "/resume/checkpoint-10" in log

    resumed, whole = rewards(box, job["id"]), rewards(box, straight["id"])
    assert sorted(resumed) == list(range(11, 31))  # no step logged twice, none missing
    assert [c["step"] for c in box.get(f"/v1/training_jobs/{job['id']}/checkpoints").json()["data"]] == [30, 20]
    # TRL restores weights, optimizer, scheduler and RNG and skips the batches already seen: on
    # the CPU the resumed run is the straight run continued, to float precision.
    last5 = sum(resumed[s] for s in range(26, 31)) / 5
    assert last5 == pytest.approx(sum(whole[s] for s in range(26, 31)) / 5, abs=1e-6)
    assert [resumed[s] for s in range(11, 31)] == pytest.approx([whole[s] for s in range(11, 31)], abs=1e-6)


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory) -> Path:
    from trainers.tiny_video import build_tiny_video_pipeline

    return build_tiny_video_pipeline(tmp_path_factory.mktemp("tiny_video") / "pipeline", seed=0)


def test_a_video_job_resumes_its_lora_optimizer_and_step(box, tiny_pipeline):
    clips = box.upload_dataset(squares_zip(n=2, frames=9), filename="clips.zip", name="squares").json()["id"]
    body = {
        "method": "sft_video_gen",
        "base_model": str(tiny_pipeline),
        "dataset_id": clips,
        "gpu": {"type": "cpu"},
        "hyperparameters": VIDEO,
    }
    first = finished(box, box.post("/v1/training_jobs", json=body).json()["id"])
    assert first["status"] == "completed", first["error"]
    files = box.get(f"/v1/training_jobs/{first['id']}/checkpoints").json()["data"][-1]["files"]
    assert {f["path"] for f in files} == {"pytorch_lora_weights.safetensors", "training_state.pt"}

    r = box.post("/v1/training_jobs", json={**body, "resume_from": f"{first['id']}@2"})
    assert r.status_code == 200, r.text
    job = finished(box, r.json()["id"])
    log = box.get(f"/v1/training_jobs/{job['id']}/logs/full").text
    assert job["status"] == "completed", (job["error"], log[-3000:])
    assert "at step 2" in log and (job["current_step"], job["total_steps"]) == (4, 4)
    points = box.get(f"/v1/training_jobs/{job['id']}/metrics").json()["metrics"]
    assert [p["step"] for p in points] == [3, 4]
    before = {p["step"]: p["values"] for p in box.get(f"/v1/training_jobs/{first['id']}/metrics").json()["metrics"]}
    # The LoRA, optimizer, schedule and random state all came back: the same steps, the same losses.
    for p in points:
        assert p["values"]["loss"] == pytest.approx(before[p["step"]]["loss"], rel=1e-4), (p, before)
        assert p["values"]["learning_rate"] == pytest.approx(before[p["step"]]["learning_rate"])

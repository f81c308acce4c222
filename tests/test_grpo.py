"""GRPO end to end through the API on the cpu pool: real TRL training of the tiny offline model,
with metrics, rollouts, checkpoints, logs and a downloaded adapter that loads and generates."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from conftest import Api, finished, run_until

from veri_box import demo

# The demo's dataset, reward ("fraction of the letter a") and the settings with which the tiny
# model learns within 30 steps: the tests train exactly what a newcomer's first job trains.
PROMPTS, A_RATIO, LEARNS = (
    demo.PROMPTS,
    demo.REWARD,
    {k: v for k, v in demo.HYPERPARAMETERS.items() if k != "max_steps"},
)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from trainers.tiny import build_tiny_lm

    return build_tiny_lm(tmp_path_factory.mktemp("tiny") / "model", seed=0)


def grpo_job(api: Api, model: Path, source: str = A_RATIO, **hyperparameters) -> str:
    dataset = api.dataset([{"prompt": p, "answer": "a"} for p in PROMPTS])
    rf = api.reward_function(source, name="a_ratio")
    # Settings with which the tiny model learns within 30 steps (bench/tiny_grpo_learning.py).
    hp = {**LEARNS, "seed": 0, **hyperparameters}
    return api.job(base_model=str(model), dataset_id=dataset, reward_function_id=rf, hyperparameters=hp)["id"]


def test_lora_job_learns_and_delivers_a_loadable_adapter(box, tiny_model, tmp_path):
    job_id = grpo_job(box, tiny_model, max_steps=30, save_steps=10)
    job = finished(box, job_id)
    assert job["status"] == "completed", (job["error"], box.get(f"/v1/training_jobs/{job_id}/logs/full").text[-3000:])
    assert (job["current_step"], job["total_steps"]) == (30, 30)

    metrics = box.get(f"/v1/training_jobs/{job_id}/metrics?max_points=1000").json()
    assert {
        "loss",
        "reward",
        "reward_std",
        "rewards/a_ratio/mean",
        "kl",
        "entropy",
        "completions/mean_length",
        "completions/clipped_ratio",
        "learning_rate",
        "grad_norm",
        "step_time",
    } <= set(metrics["available_keys"])
    reward = [p["values"]["reward"] for p in metrics["metrics"] if "reward" in p["values"]]
    assert len(reward) == 30
    first, last = sum(reward[:5]) / 5, sum(reward[-5:]) / 5
    assert last - first >= 0.1, reward

    samples = box.get(f"/v1/training_jobs/{job_id}/samples?step=30&limit=100").json()["data"]
    assert len(samples) == 32
    assert {"prompt", "completion", "reward", "rewards", "advantage"} <= set(samples[0])
    assert samples[0]["rewards"]["a_ratio"] == pytest.approx(samples[0]["reward"])
    assert "<|im_start|>user" in samples[0]["prompt"]

    assert [c["step"] for c in box.get(f"/v1/training_jobs/{job_id}/checkpoints").json()["data"]] == [30, 20, 10]
    log = box.get(f"/v1/training_jobs/{job_id}/logs").text
    assert "step 30/30" in log and log.rstrip().endswith("data: [Job completed]")

    adapter = tmp_path / "adapter"
    for f in box.get(f"/v1/training_jobs/{job_id}/model").json()["files"]:
        target = adapter / f["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(box.client.get(f["url"].removeprefix(box.settings.base_url)).content)
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(adapter)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), adapter)
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Say something:"}], tokenize=False, add_generation_prompt=True
    )
    out = model.generate(**tokenizer(text, return_tensors="pt"), max_new_tokens=8, do_sample=False)
    assert out.shape[1] > len(tokenizer(text)["input_ids"])


def test_full_fine_tune_saves_a_whole_model(box, tiny_model, tmp_path):
    job_id = grpo_job(
        box, tiny_model, max_steps=2, lora_rank=None, lora_alpha=None, lora_dropout=0.05, learning_rate=0.01
    )
    job = finished(box, job_id)
    assert job["status"] == "completed", job["error"]
    files = {f["path"] for f in box.get(f"/v1/training_jobs/{job_id}/model").json()["files"]}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= files
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(box.settings.data_dir / "jobs" / job_id / "output")


def test_4bit_qlora_job_runs(box, tiny_model):
    job_id = grpo_job(box, tiny_model, max_steps=2, load_in_4bit=True)
    job = finished(box, job_id)
    assert job["status"] == "completed", job["error"]
    log = box.get(f"/v1/training_jobs/{job_id}/logs/full").text
    assert "loaded in 4-bit (QLoRA): 14 linear layers quantized" in log
    files = {f["path"] for f in box.get(f"/v1/training_jobs/{job_id}/model").json()["files"]}
    assert "adapter_model.safetensors" in files


@pytest.mark.parametrize(
    "body, words",
    [
        (
            "    raise KeyError('score')\n",
            ["raised KeyError", "'score'", "while scoring the prompt: <|im_start|>user", "line 2, in reward"],
        ),
        ("    return [float('nan')] * len(completions)\n", ["returned nan", "Prompt:"]),
        ("    return [0.0]\n", ["returned 1 rewards for 32 completions"]),
    ],
)
def test_reward_function_failures_stop_the_job_with_a_reason(box, tiny_model, body, words):
    source = "def reward(completions, **kwargs):\n" + body
    job_id = grpo_job(box, tiny_model, source, max_steps=2)
    job = finished(box, job_id)
    assert job["status"] == "failed" and job["error"]["code"] == "reward_function_error", job["error"]
    assert all(w in job["error"]["message"] for w in words), job["error"]["message"]


def test_a_model_removed_after_submit_fails_the_job_clearly(box, tiny_model, monkeypatch, tmp_path):
    """Submit refuses a model that is not on the box (test_models.py); one deleted before its
    trainer starts still fails the job with model_not_found saying where the trainer looked."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    model = Path(shutil.copytree(tiny_model, tmp_path / "removed-model"))
    job_id = grpo_job(box, model, max_steps=1)
    shutil.rmtree(model)
    job = finished(box, job_id)
    assert job["error"]["code"] == "model_not_found"
    assert str(model) in job["error"]["message"] and str(tmp_path / "hf") in job["error"]["message"]


def cpu_available(api: Api) -> int:
    rows = api.get("/v1/gpu/availability").json()["availability"]
    return next(r["available"] for r in rows if r["gpu_type"] == "cpu")


def test_cancel_saves_a_checkpoint_and_frees_the_device_quickly(box, tiny_model):
    job_id = grpo_job(box, tiny_model, max_steps=200)
    run_until(box, lambda: (box.store.get_job(job_id)["current_step"] or 0) >= 3, timeout=300)
    assert cpu_available(box) == 0

    r = box.post(f"/v1/training_jobs/{job_id}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
    cancelled = time.monotonic()
    run_until(box, lambda: cpu_available(box) == 1, timeout=30)
    took = time.monotonic() - cancelled
    log = box.get(f"/v1/training_jobs/{job_id}/logs/full").text
    assert took < 10, (took, log[-3000:])

    job = box.get(f"/v1/training_jobs/{job_id}").json()
    assert job["status"] == "cancelled"
    last_step = job["current_step"]
    assert 3 <= last_step < 200

    checkpoints = box.get(f"/v1/training_jobs/{job_id}/checkpoints").json()["data"]
    assert len(checkpoints) == 1, (checkpoints, log[-3000:])
    assert checkpoints[0]["step"] == last_step  # the step it was in when SIGTERM came, logged then saved
    assert "adapter_model.safetensors" in {f["path"] for f in checkpoints[0]["files"]}

    assert f"stopped on SIGTERM at step {checkpoints[0]['step']}" in log, log[-3000:]
    sse = box.get(f"/v1/training_jobs/{job_id}/logs").text
    assert sse.rstrip().endswith("data: [Job cancelled]"), sse[-500:]


def test_several_weighted_reward_functions_and_their_prints(box, tiny_model):
    dataset = box.dataset([{"prompt": p, "target": "a"} for p in PROMPTS])
    loud = (
        'def reward(completions, target, **kwargs):\n    print("scored", len(completions), "for", target[0])\n'
        "    return [c.count(target[0]) / len(c) if c else 0.0 for c in completions]\n"
    )
    short = "def reward(completions, **kwargs):\n    return [1.0 / (1 + len(c)) for c in completions]\n"
    r = box.post(
        "/v1/training_jobs",
        json={
            "base_model": str(tiny_model),
            "dataset_id": dataset,
            "output_name": "mix",
            "gpu": {"gpu_type": "cpu", "gpu_count": 1},
            "reward_sources": [loud, short],
            "reward_weights": [1.0, 0.5],
            "hyperparameters": {**LEARNS, "seed": 0, "max_steps": 2},
        },
    )
    assert r.status_code == 200, r.text
    job = finished(box, r.json()["id"])
    assert job["status"] == "completed", job["error"]
    keys = box.get(f"/v1/training_jobs/{job['id']}/metrics").json()["available_keys"]
    assert {"rewards/mix reward 0/mean", "rewards/mix reward 1/mean"} <= set(keys)
    sample = box.get(f"/v1/training_jobs/{job['id']}/samples?limit=1").json()["data"][0]
    parts = sample["rewards"]
    assert sample["reward"] == pytest.approx(parts["mix reward 0"] + 0.5 * parts["mix reward 1"])
    assert "scored 32 for a" in box.get(f"/v1/training_jobs/{job['id']}/logs/full").text

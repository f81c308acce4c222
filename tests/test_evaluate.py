"""Base against trained, end to end: a real tiny LoRA GRPO job trained on the cpu pool, then its
base and trained models answering the same prompts through POST .../evaluate (the real
trainers/evaluate.py in the sandbox), each answer scored by the job's own reward function with
its weight; refusals; a reward function that raises; the dashboard's section."""

from __future__ import annotations

import re
import time

import pytest
from conftest import Api, finished
from test_dashboard import Browser

from veri_box import demo

HP = {**{k: v for k, v in demo.HYPERPARAMETERS.items() if k != "max_steps"}, "max_steps": 4, "seed": 0}
WEIGHT = 2.0
# The demo's reward (fraction of the letter a), which raises on a prompt that asks it to, so an
# evaluation can meet a reward function error the training never did.
REWARD = '''def reward(completions, prompts, **kwargs):
    """The fraction of the completion's characters that are the letter 'a'."""
    if any("BOOM" in p for p in prompts):
        raise ValueError("boom asked for")
    return [c.count("a") / len(c) if c else 0.0 for c in completions]
'''


def a_ratio(text: str) -> float:
    namespace: dict = {}
    exec(REWARD, namespace)  # the very function the job scores with
    return namespace["reward"](completions=[text], prompts=["x"])[0]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from trainers.tiny import build_tiny_lm

    return build_tiny_lm(tmp_path_factory.mktemp("tiny") / "model", seed=0)


def grpo_job(box: Api, model, **hp) -> str:
    dataset = box.dataset([{"prompt": p, "answer": "a"} for p in demo.PROMPTS])
    rf = box.reward_function(REWARD, name="a_ratio")
    return box.job(
        base_model=str(model),
        dataset_id=dataset,
        reward_function_id=rf,
        reward_weights=[WEIGHT],
        hyperparameters={**HP, **hp},
    )["id"]


def wait(box: Api, job_id: str, evaluation_id: str, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    seen = set()
    while time.monotonic() < deadline:
        evaluation = box.get(f"/v1/training_jobs/{job_id}/evaluations/{evaluation_id}").json()
        seen.add(evaluation["status"])
        if evaluation["status"] in ("completed", "failed"):
            evaluation["seen"] = seen
            return evaluation
        time.sleep(0.3)
    raise AssertionError("the evaluation did not end in time")


def check_scores(evaluation: dict) -> None:
    for row in evaluation["rows"]:
        for side in ("base", "trained"):
            answer = row[side]
            assert isinstance(answer["answer"], str)
            assert answer["rewards"]["a_ratio"] == pytest.approx(a_ratio(answer["answer"]))
            assert answer["reward"] == pytest.approx(WEIGHT * a_ratio(answer["answer"]))
    for side in ("base", "trained"):
        rewards = [row[side]["reward"] for row in evaluation["rows"]]
        assert evaluation[f"{side}_mean"] == pytest.approx(sum(rewards) / len(rewards))


def test_evaluate_compares_base_and_trained_with_the_jobs_rewards(box, tiny_model):
    job_id = grpo_job(box, tiny_model)
    job = finished(box, job_id)
    assert job["status"] == "completed", job["error"]

    r = box.post(f"/v1/training_jobs/{job_id}/evaluate", json={"rows": 4, "max_tokens": 12})
    assert r.status_code == 202, r.text
    started = r.json()
    assert started["status"] in ("pending", "running") and started["source"] == "dataset"
    assert len(started["dataset_rows"]) == 4 and started["seed"] == 0 and started["temperature"] == 0.0
    # One at a time per job: a second request while this one runs is refused.
    again = box.post(f"/v1/training_jobs/{job_id}/evaluate", json={"rows": 1})
    assert (again.status_code, again.json()["error"]["code"]) == (409, "evaluation_running")
    # Nor is the job deleted from under it (its child reads the job's files).
    gone = box.delete(f"/v1/training_jobs/{job_id}")
    assert (gone.status_code, gone.json()["error"]["code"]) == (409, "evaluation_running")
    done = wait(box, job_id, started["id"])
    assert done["status"] == "completed", done["error"]
    assert [row["prompt"] for row in done["rows"]] == [demo.PROMPTS[i] for i in done["dataset_rows"]]
    check_scores(done)
    # A LoRA this briefly trained still answers differently from its base somewhere.
    assert any(row["base"]["answer"] != row["trained"]["answer"] for row in done["rows"]), done["rows"]

    prompts = ["Say something:", "Write a word with many a's:"]
    r = box.post(f"/v1/training_jobs/{job_id}/evaluate", json={"prompts": prompts, "max_tokens": 8})
    assert r.status_code == 202, r.text
    given = wait(box, job_id, r.json()["id"])
    assert given["status"] == "completed", given["error"]
    assert given["source"] == "prompts" and given["dataset_rows"] is None
    assert [row["prompt"] for row in given["rows"]] == prompts
    check_scores(given)

    # The dashboard's section: the latest evaluation's table with both answers, rewards and means.
    web = Browser(box)
    assert "Evaluate: base vs trained" in web.get(f"/jobs/{job_id}").text
    html = web.get(f"/jobs/{job_id}/evaluations").text
    assert 'id="evaluation-table"' in html and "Write a word with many a&#39;s:" in html
    assert f"{given['base_mean']:.3f}" in html and f"{given['trained_mean']:.3f}" in html
    assert html.count("<tr>") == 1 + len(prompts)  # the header and one row per prompt

    # A reward function that raises on one prompt, asked from the dashboard's form: a failed
    # evaluation showing the user's frame, in the API and on the page.
    r = web.post(f"/jobs/{job_id}/evaluate", data={"source": "prompts", "prompts": "BOOM now\n", "max_tokens": "4"})
    assert r.status_code == 200 and ('data-evaluation="pending"' in r.text or 'data-evaluation="running"' in r.text)
    latest = box.get(f"/v1/training_jobs/{job_id}/evaluations").json()["data"][0]
    failed = wait(box, job_id, latest["id"])
    assert failed["status"] == "failed" and failed["rows"] == []
    assert failed["error"]["code"] == "reward_function_error"
    assert "raised ValueError: boom asked for" in failed["error"]["message"]
    assert 'raise ValueError("boom asked for")' in failed["error"]["traceback"]
    assert (
        "trainers/" not in failed["error"]["traceback"]
        and str(box.settings.data_dir) not in failed["error"]["traceback"]
    )
    assert re.search(r'File "rf_[0-9a-f]+\.py", line 4, in reward', failed["error"]["traceback"]), failed["error"]
    html = web.get(f"/jobs/{job_id}/evaluations").text
    assert "boom asked for" in html and "raise ValueError(&#34;boom asked for&#34;)" in html

    listed = box.get(f"/v1/training_jobs/{job_id}/evaluations").json()["data"]
    assert [e["id"] for e in listed] == [failed["id"], given["id"], done["id"]]  # newest first
    # A bad form is the API's error in the panel, nothing recorded.
    r = web.post(f"/jobs/{job_id}/evaluate", data={"source": "rows", "rows": "0"})
    assert r.status_code == 200 and 'data-code="invalid_value"' in r.text
    assert len(box.get(f"/v1/training_jobs/{job_id}/evaluations").json()["data"]) == 3


def test_refusals_are_4xx_with_codes(box, tiny_model):
    job_id = grpo_job(box, tiny_model)  # queued: the runner is not ticked
    r = box.post(f"/v1/training_jobs/{job_id}/evaluate", json={"rows": 2})
    assert (r.status_code, r.json()["error"]["code"]) == (409, "job_not_completed")
    box.store.update_job(job_id, status="failed")
    r = box.post(f"/v1/training_jobs/{job_id}/evaluate", json={"rows": 2})
    assert (r.status_code, r.json()["error"]["code"]) == (409, "job_not_completed")
    files = {"file": ("squares.zip", demo.squares_zip(), "application/zip")}
    clips = box.post("/v1/datasets", data={"name": "squares"}, files=files).json()["id"]
    video = box.job(
        method="sft_video_gen", base_model=demo.TINY_VIDEO, dataset_id=clips, hyperparameters=demo.VIDEO_HYPERPARAMETERS
    )["id"]
    r = box.post(f"/v1/training_jobs/{video}/evaluate", json={"rows": 2})
    assert (r.status_code, r.json()["error"]["code"]) == (400, "evaluation_not_supported")
    assert box.post("/v1/training_jobs/job_nope/evaluate", json={"rows": 2}).status_code == 404
    box.store.update_job(job_id, status="completed")
    for body, code in [
        ({"rows": 0}, "invalid_value"),
        ({"rows": 1000}, "invalid_value"),
        ({"prompts": []}, "invalid_value"),
        ({"rows": 2, "prompts": ["x"]}, "rows_and_prompts"),
        ({"rows": 2, "colour": "red"}, None),
        ({"prompts": ["x"], "temperature": -1}, "invalid_value"),
    ]:
        r = box.post(f"/v1/training_jobs/{job_id}/evaluate", json=body)
        assert r.status_code in (400, 409), (body, r.text)
        if code:
            assert r.json()["error"]["code"] in (code, "model_not_available"), (body, r.text)
    # The job says completed but left no model here: refused before anything is recorded.
    r = box.post(f"/v1/training_jobs/{job_id}/evaluate", json={"rows": 2})
    assert (r.status_code, r.json()["error"]["code"]) == (409, "model_not_available")
    assert box.get(f"/v1/training_jobs/{job_id}/evaluations").json()["data"] == []


CHAT_REWARD = '''def reward(completions, **kwargs):
    """Chat completions arrive as messages: the fraction of the reply's characters that are 'a'."""
    texts = [c[0]["content"] for c in completions]
    return [t.count("a") / len(t) if t else 0.0 for t in texts]
'''


def test_a_full_fine_tune_on_a_chat_dataset_answers_in_messages(box, tiny_model):
    rows = [
        {"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": "aaa"}]} for p in demo.PROMPTS
    ]
    dataset = box.dataset(rows)
    rf = box.reward_function(CHAT_REWARD, name="chat_a")
    hp = {**HP, "max_steps": 2, "lora_rank": None, "lora_alpha": None, "learning_rate": 0.01}
    job_id = box.job(base_model=str(tiny_model), dataset_id=dataset, reward_function_id=rf, hyperparameters=hp)["id"]
    job = finished(box, job_id)
    assert job["status"] == "completed", job["error"]
    r = box.post(f"/v1/training_jobs/{job_id}/evaluate", json={"rows": 3, "max_tokens": 8, "temperature": 0.7})
    assert r.status_code == 202, r.text
    done = wait(box, job_id, r.json()["id"])
    assert done["status"] == "completed", done["error"]
    assert done["seconds"]["total"] > 0 and done["temperature"] == 0.7
    assert [row["prompt"] for row in done["rows"]] == [f"user: {demo.PROMPTS[i]}" for i in done["dataset_rows"]]
    for row in done["rows"]:
        for side in ("base", "trained"):
            text = row[side]["answer"]
            assert row[side]["reward"] == pytest.approx(text.count("a") / len(text) if text else 0.0)


def test_an_evaluation_the_server_stopped_during_reads_as_interrupted(box, tiny_model):
    from veri_box import evaluations

    job_id = grpo_job(box, tiny_model)
    request = {"source": "prompts", "format": "prompt_only", "max_tokens": 4, "temperature": 0.0, "seed": 0}
    row = {
        "id": "eval_left",
        "job_id": job_id,
        "status": "running",
        "request": request,
        "created_at": "2026-01-01T00:00:00.000Z",
    }
    evaluations._insert(box.store, row)  # as a previous server process left it
    got = box.get(f"/v1/training_jobs/{job_id}/evaluations/eval_left").json()
    assert got["status"] == "failed" and got["error"]["code"] == "evaluation_interrupted"
    assert (
        box.get(f"/v1/training_jobs/{job_id}/evaluations/eval_nope").json()["error"]["code"] == "evaluation_not_found"
    )
    # Deleting the job deletes its evaluations.
    box.store.update_job(job_id, status="cancelled")
    assert box.delete(f"/v1/training_jobs/{job_id}").status_code in (200, 204)
    assert box.store.db.execute("SELECT count(*) FROM evaluations").fetchone()[0] == 0

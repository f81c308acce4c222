"""GRPO health alerts: real tiny GRPO jobs on the cpu pool driven into the states the box warns
about (a constant reward, a reward that pays for saying nothing), the demo job that must stay
quiet, a job that asked to be stopped at its first alert, and the thresholds a job sets. The
evaluator's remaining checks (NaN, KL, truncation, slow rewards) are driven by crafted metric
streams: a huge learning rate on the tiny model does not reproduce them (grad clipping keeps
its loss finite and its KL steady; see the notes in the tests)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from conftest import finished, run_until
from test_dashboard import Browser
from test_grpo import grpo_job

from veri_box import demo, health
from veri_box.health import HealthSettings, JobHealth

CONSTANT = "def reward(completions, **kwargs):\n    return [1.0 for c in completions]\n"
# Pays more the shorter the answer: the tiny model learns to end at once (mean length -> 1 token).
SHORT = "def reward(completions, **kwargs):\n    return [1.0 / (1 + len(c)) for c in completions]\n"
ALERT_FIELDS = {"alert", "message", "advice", "step"}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from trainers.tiny import build_tiny_lm

    return build_tiny_lm(tmp_path_factory.mktemp("tiny") / "model", seed=0)


def alerts_of(api, job_id: str) -> list[dict]:
    events = api.get(f"/v1/training_jobs/{job_id}/events?limit=1000").json()["items"]
    return [e["metadata"] for e in events if e["event_type"] == "health_alert"]


# -- real jobs -------------------------------------------------------------------------------


def test_a_constant_reward_raises_zero_variance_once_within_the_window(box, tiny_model):
    job_id = grpo_job(box, tiny_model, CONSTANT, max_steps=25)
    job = finished(box, job_id)
    assert job["status"] == "completed", job["error"]  # warn (the default) lets it run on
    alerts = alerts_of(box, job_id)
    kinds = [a["alert"] for a in alerts]
    # Every group ties from the first step; the default window is 10 steps, once per episode.
    assert kinds.count("zero_reward_variance") == 1, alerts
    zero = next(a for a in alerts if a["alert"] == "zero_reward_variance")
    assert set(zero) == ALERT_FIELDS and zero["step"] == 10
    assert "nothing to learn" in zero["message"] and "partial credit" in zero["advice"]
    # The mean reward never moved either: flat after 20 steps, also once.
    assert kinds.count("reward_flat") == 1 and next(a for a in alerts if a["alert"] == "reward_flat")["step"] == 20

    page = Browser(box).get(f"/jobs/{job_id}")
    assert page.status_code == 200
    assert 'id="health-alerts"' in page.text and 'data-alert="zero_reward_variance"' in page.text
    assert "nothing to learn from" in page.text and "What to try:" in page.text


def test_a_reward_for_short_answers_raises_length_collapse(box, tiny_model):
    job_id = grpo_job(box, tiny_model, SHORT, max_steps=20, max_response_length=64)
    job = finished(box, job_id)
    assert job["status"] == "completed", job["error"]
    collapse = [a for a in alerts_of(box, job_id) if a["alert"] == "completion_length_collapse"]
    assert len(collapse) == 1, alerts_of(box, job_id)
    # Measured: the mean length falls from ~60 tokens to 1 by step 8; five steps at <= 2 tokens.
    assert collapse[0]["step"] <= 16 and "say nothing" in collapse[0]["message"]
    lengths = box.get(f"/v1/training_jobs/{job_id}/metrics?keys=completions/mean_length").json()["metrics"]
    assert lengths[-1]["values"]["completions/mean_length"] <= 2


def test_the_demo_job_raises_no_alert_and_records_throughput(box, tiny_model):
    """The demo's own settings (seed included) learn within 30 steps and must stay quiet, even
    though the tiny model truncates every completion at 16 tokens from its first step."""
    dataset = box.dataset([{"prompt": p} for p in demo.PROMPTS])
    rf = box.reward_function(demo.REWARD, name="a_ratio")
    job_id = box.job(
        base_model=str(tiny_model), dataset_id=dataset, reward_function_id=rf, hyperparameters=demo.HYPERPARAMETERS
    )["id"]
    job = finished(box, job_id)
    assert job["status"] == "completed", job["error"]
    assert alerts_of(box, job_id) == []
    metrics = box.get(f"/v1/training_jobs/{job_id}/metrics?max_points=1000").json()
    assert {"throughput/tokens_per_s", "timing/generation_s", "timing/reward_s"} <= set(metrics["available_keys"])
    rates = [p["values"].get("throughput/tokens_per_s") for p in metrics["metrics"]]
    rates = [r for r in rates if r is not None]
    assert len(rates) == 30 and all(r > 0 for r in rates)


def test_on_alert_stop_fails_the_job_and_stops_its_trainer_cleanly(box, tiny_model):
    hp = {"max_steps": 300, "health": {"on_alert": "stop", "zero_std_steps": 3}}
    job_id = grpo_job(box, tiny_model, CONSTANT, **hp)
    run_until(box, lambda: box.store.get_job(job_id)["status"] == "failed", timeout=300)
    run_until(box, lambda: not box.store.jobs_holding_devices(), timeout=60)  # the trainer is gone
    job = box.get(f"/v1/training_jobs/{job_id}").json()
    assert job["error"]["code"] == "health_check_failed"
    assert "zero_reward_variance" in job["error"]["message"] and "step 3" in job["error"]["message"]
    assert job["current_step"] < 300
    assert [a["alert"] for a in alerts_of(box, job_id)][:1] == ["zero_reward_variance"]
    log = box.get(f"/v1/training_jobs/{job_id}/logs/full").text
    assert "stopped on SIGTERM" in log, log[-2000:]  # the runner's normal stop: SIGTERM, save, exit


def test_a_huge_learning_rate_raises_kl_high_against_the_jobs_threshold(box, tiny_model):
    """learning_rate 1.0 (the most the API takes) on the tiny model: no NaN (TRL clips gradients
    at 1.0) and KL settles around 3-10, under the default kl_max of 10, so the job sets its own
    threshold, as a user watching a small model would."""
    job_id = grpo_job(box, tiny_model, max_steps=10, learning_rate=1.0, health={"kl_max": 2.0})
    job = finished(box, job_id)
    assert job["status"] == "completed", job["error"]
    kl = [a for a in alerts_of(box, job_id) if a["alert"] == "kl_high"]
    assert len(kl) == 1 and kl[0]["step"] <= 8, alerts_of(box, job_id)  # measured: KL > 2.8 from step 2
    assert "above 2 for 3 steps" in kl[0]["message"] and "kl_coef" in kl[0]["advice"]


def test_the_banner_refreshes_itself_while_the_job_runs_and_escapes_what_it_shows(api):
    job = api.job()  # queued: live
    alert = {"alert": "kl_spike", "message": "KL <b>jumped</b>.", "advice": "Lower learning_rate.", "step": 12}
    api.store.add_event(job["id"], "health_alert", alert)
    web = Browser(api)
    page = web.get(f"/jobs/{job['id']}", headers={"HX-Request": "true"}).text  # what the banner's poll reads
    banner = page[page.index('<div id="health-alerts"') :]
    banner = banner[: banner.index("</section>")]
    assert 'hx-select="#health-alerts"' in banner and 'hx-trigger="every 5s' in banner
    assert 'data-alert="kl_spike"' in banner and 'data-step="12"' in banner
    assert "KL &lt;b&gt;jumped&lt;/b&gt;." in banner and "Lower learning_rate." in banner
    api.box.runner.cancel(job["id"])
    ended = web.get(f"/jobs/{job['id']}").text
    assert "hx-select" not in ended[ended.index('<div id="health-alerts"') :][:300]  # no polling once it ended
    quiet = api.job()
    assert "Health alerts" not in web.get(f"/jobs/{quiet['id']}").text


def test_a_reward_slower_than_generation_raises_slow_reward(box, tiny_model):
    # Generating 32 completions of 16 tokens takes the tiny model well under 0.5 s on a CPU.
    sleepy = (
        "import time\n\ndef reward(completions, **kwargs):\n    time.sleep(1.0)\n"
        "    return [c.count('a') / len(c) if c else 0.0 for c in completions]\n"
    )
    job_id = grpo_job(box, tiny_model, sleepy, max_steps=5)
    job = finished(box, job_id)
    assert job["status"] == "completed", job["error"]
    slow = [a for a in alerts_of(box, job_id) if a["alert"] == "slow_reward"]
    assert len(slow) == 1 and slow[0]["step"] == 3, alerts_of(box, job_id)
    assert "the reward functions, not the GPU, set the pace" in slow[0]["message"]
    timing = box.get(f"/v1/training_jobs/{job_id}/metrics?keys=timing/reward_s").json()["metrics"]
    assert all(p["values"]["timing/reward_s"] >= 1.0 for p in timing) and len(timing) == 5


# -- the job's settings ------------------------------------------------------------------------


def test_health_settings_are_validated_and_echoed(api):
    ok = api.job(hyperparameters={"health": {"on_alert": "stop", "kl_max": 2.5, "ignore": ["reward_flat"]}})
    assert ok["hyperparameters"]["health"]["on_alert"] == "stop"
    assert ok["hyperparameters"]["health"]["kl_max"] == 2.5
    assert ok["hyperparameters"]["health"]["zero_std_steps"] == 10  # the default, filled in
    assert "health" not in api.job()["hyperparameters"]  # not given: the defaults apply

    before = len(api.store.jobs_with_status("queued"))
    body = {
        "base_model": "Qwen/Qwen3-4B",
        "dataset_id": api.dataset(),
        "reward_function_id": api.reward_function(),
        "output_name": "t",
        "gpu": {"type": "cpu", "count": 1},
    }
    for given, code, param in [
        ({"kl_maximum": 1}, "unknown_field", "hyperparameters.health.kl_maximum"),
        ({"zero_std_frac": 1.5}, "invalid_hyperparameter", "hyperparameters.health.zero_std_frac"),
        ({"on_alert": "explode"}, "invalid_hyperparameter", "hyperparameters.health.on_alert"),
        ({"ignore": ["everything"]}, "invalid_hyperparameter", "hyperparameters.health.ignore[0]"),
    ]:
        r = api.post("/v1/training_jobs", json={**body, "hyperparameters": {"health": given}})
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert (error["code"], error["param"]) == (code, param), error
    assert (
        "known: on_alert"
        in api.post("/v1/training_jobs", json={**body, "hyperparameters": {"health": {"nope": 1}}}).json()["error"][
            "message"
        ]
    )
    assert len(api.store.jobs_with_status("queued")) == before  # nothing half-written


# -- the evaluator over crafted metric streams --------------------------------------------------


def run(stream: list[dict], max_length: int = 64, **settings) -> list[tuple[str, int]]:
    h = JobHealth(HealthSettings(**settings), max_length)
    return [(a["alert"], a["step"]) for step, v in enumerate(stream, 1) for a in h.observe(step, v)]


def test_nan_loss_or_grad_norm_alerts_at_once_and_again_after_recovering():
    """A huge learning rate on the tiny model stays finite (TRL clips gradients at 1.0), so the
    NaN the trainer flags (nonfinite/<key>, trainers/grpo.py) is crafted here."""
    ok = {"loss": 0.1, "grad_norm": 1.0}
    stream = [ok, ok, {"nonfinite/loss": 1.0, "nonfinite/grad_norm": 1.0}, {"nonfinite/loss": 1.0}, ok]
    stream += [{"grad_norm": math.inf, "loss": 0.2}]
    assert run(stream) == [("nonfinite", 3), ("nonfinite", 6)]
    h = JobHealth(HealthSettings())
    alert = h.observe(1, {"nonfinite/grad_norm": 1.0})[0]
    assert "grad_norm became NaN or infinite" in alert["message"] and "learning_rate" in alert["advice"]


def test_kl_above_the_threshold_for_its_steps_and_kl_spikes():
    steady = [{"kl": 0.05}] * 10
    assert run(steady + [{"kl": 12.0}, {"kl": 0.05}, {"kl": 12.0}]) == [("kl_spike", 11), ("kl_spike", 13)]
    high = [{"kl": 11.0 + i * 0.1} for i in range(5)]
    assert run(high) == [("kl_high", 3)]  # 3 steps above 10 (kl_max) by default
    assert run(high, kl_max=20.0) == []
    # A spike is measured against the recent median, and must clear kl_spike_min.
    assert run([{"kl": 0.001}] * 5 + [{"kl": 0.5}]) == []


def test_truncation_alerts_only_for_completions_that_grew_into_the_cap():
    growing = [{"completions/clipped_ratio": 0.1}] * 5 + [{"completions/clipped_ratio": 1.0}] * 6
    assert run(growing) == [("completion_truncation", 10)]
    h = JobHealth(HealthSettings(length_steps=2), max_response_length=256)
    for step, ratio in enumerate([0.0, 0.0, 0.95], 1):
        out = h.observe(step, {"completions/clipped_ratio": ratio})
    out = h.observe(4, {"completions/clipped_ratio": 0.95})
    assert "max_response_length (256 tokens)" in out[0]["message"]
    # The demo's case: cut at 16 tokens from the first step, by its settings, not a change.
    assert run([{"completions/clipped_ratio": 1.0}] * 30, max_length=16) == []


def test_episodes_zero_variance_flat_slow_reward_and_ignore():
    tie, spread = {"frac_reward_zero_std": 1.0}, {"frac_reward_zero_std": 0.0}
    stream = [tie] * 12 + [spread] + [tie] * 10
    assert run(stream) == [("zero_reward_variance", 10), ("zero_reward_variance", 23)]
    assert run(stream, zero_std_steps=3, ignore=["zero_reward_variance"]) == []
    flat = [{"reward": 0.5}] * 25
    assert run(flat, reward_flat_steps=5) == [("reward_flat", 5)]
    noisy = [{"reward": 0.5 + 0.01 * (i % 2)} for i in range(25)]
    assert run(noisy, reward_flat_steps=5) == []
    slow = [{"timing/reward_s": 2.0, "timing/generation_s": 1.0}] * 4
    assert run(slow) == [("slow_reward", 3)]
    assert run([{"completions/mean_length": 1.0}] * 5) == [("completion_length_collapse", 5)]


def test_a_restarted_server_does_not_raise_an_open_episode_again():
    monitor = health.HealthMonitor()
    job = {"id": "job_x", "method": "grpo", "hyperparameters": {"max_response_length": 64}}
    points = [(s, {"frac_reward_zero_std": 1.0}) for s in range(1, 15)]
    assert monitor.observe(job, points, lambda: {"zero_reward_variance"}) == []
    assert health.HealthMonitor().observe(job, points)[0]["step"] == 10
    assert health.HealthMonitor().observe({**job, "method": "sft_video_gen"}, points) == []


@pytest.mark.parametrize("kind", ["zero_reward_variance", "kl_high"])
def test_the_failure_message_names_the_alert(kind):
    alert = {"alert": kind, "message": "M.", "advice": "A.", "step": 7}
    message = health.failure_message(alert)
    assert kind in message and "step 7" in message and "M." in message and "A." in message

"""Per-step metrics: every step kept, even downsampling that keeps the last point."""


def fill(api, job_id, steps, keys=("loss", "reward")):
    api.store.add_metrics(job_id, [(s, {k: s * (i + 1) / 10 for i, k in enumerate(keys)}) for s in steps])


def metrics(api, job_id, query=""):
    r = api.get(f"/v1/training_jobs/{job_id}/metrics{query}")
    assert r.status_code == 200, r.text
    return r.json()


def test_empty_job(api):
    job = api.job()
    assert metrics(api, job["id"]) == {"metrics": [], "available_keys": [], "latest_step": None}


def test_small_runs_come_back_whole(api):
    job = api.job()
    fill(api, job["id"], range(0, 50))
    body = metrics(api, job["id"])
    assert [p["step"] for p in body["metrics"]] == list(range(50))
    assert body["metrics"][3] == {"step": 3, "values": {"loss": 0.3, "reward": 0.6}}
    assert body["available_keys"] == ["loss", "reward"] and body["latest_step"] == 49


def test_downsampling_is_even_and_keeps_the_last_point(api):
    job = api.job()
    fill(api, job["id"], range(1, 10_001))
    body = metrics(api, job["id"], "?max_points=100")
    steps = [p["step"] for p in body["metrics"]]
    assert len(steps) == 100 and steps[0] == 1 and steps[-1] == 10_000
    gaps = {b - a for a, b in zip(steps, steps[1:])}
    assert max(gaps) - min(gaps) <= 1
    assert all(set(p["values"]) == {"loss", "reward"} for p in body["metrics"])
    one = metrics(api, job["id"], "?max_points=1")
    assert [p["step"] for p in one["metrics"]] == [10_000]


def test_filters_do_not_change_available_keys_or_latest_step(api):
    job = api.job()
    fill(api, job["id"], range(0, 1000), keys=("loss", "reward", "kl"))
    body = metrics(api, job["id"], "?keys=reward,unknown&from_step=100&to_step=199&max_points=10")
    assert body["available_keys"] == ["kl", "loss", "reward"]
    assert body["latest_step"] == 999
    steps = [p["step"] for p in body["metrics"]]
    assert steps[0] == 100 and steps[-1] == 199 and len(steps) == 10
    assert all(list(p["values"]) == ["reward"] for p in body["metrics"])
    # Incremental polling: latest_step + 1 returns nothing new until more is logged.
    assert metrics(api, job["id"], "?from_step=1000")["metrics"] == []
    fill(api, job["id"], [1000, 1001])
    assert [p["step"] for p in metrics(api, job["id"], "?from_step=1000")["metrics"]] == [1000, 1001]


def test_sparse_keys_and_relogged_steps(api):
    job = api.job()
    fill(api, job["id"], range(0, 100), keys=("loss",))
    api.store.add_metrics(job["id"], [(s, {"eval_reward": 0.5}) for s in range(0, 100, 25)])
    api.store.add_metrics(job["id"], [(10, {"loss": 42.0})])
    body = metrics(api, job["id"])
    by_step = {p["step"]: p["values"] for p in body["metrics"]}
    assert by_step[10] == {"loss": 42.0}
    assert by_step[25] == {"loss": 2.5, "eval_reward": 0.5}
    only_eval = metrics(api, job["id"], "?keys=eval_reward")
    assert [p["step"] for p in only_eval["metrics"]] == [0, 25, 50, 75]


def test_bounds_are_enforced(api):
    job = api.job()
    for query in ("?max_points=0", "?max_points=10001", "?from_step=-1", "?to_step=abc"):
        r = api.get(f"/v1/training_jobs/{job['id']}/metrics{query}")
        assert r.status_code == 400, query
        assert r.json()["error"]["code"] == "invalid_value"


def test_keys_logged_at_different_rates_are_each_downsampled(api):
    job = api.job()
    fill(api, job["id"], range(0, 5000), keys=("loss",))
    api.store.add_metrics(job["id"], [(s, {"eval_reward": s / 7}) for s in range(3, 5000, 7)])
    body = metrics(api, job["id"], "?max_points=50")
    loss = [p["step"] for p in body["metrics"] if "loss" in p["values"]]
    evals = [p["step"] for p in body["metrics"] if "eval_reward" in p["values"]]
    assert len(loss) == 50 and loss[-1] == 4999
    assert 40 <= len(evals) <= 50 and evals[0] == 3 and evals[-1] == 4999 - (4999 - 3) % 7
    assert all((s - 3) % 7 == 0 for s in evals)

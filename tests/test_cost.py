"""What a job would cost and where GPUs are: GET /v1/cost/estimate and GET /v1/gpu/availability
over this box's devices (--price-per-hour) and the live quotes of the cloud providers' stand-ins
(tests/provider_standins.py), in process and through a real `veri-box serve` read by the
official veri-sdk client."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import Api
from hf_cache import api_test_cache
from litestar.testing import TestClient
from provider_standins import LambdaStandIn, PrimeStandIn, RunPodStandIn
from serving import KEY, Server

from veri_box.app import Box, create_app
from veri_box.devices import build_inventory
from veri_box.settings import Settings
from veri_box.slurm import Cluster, Node

PRICES = "A100-80GB=1.89"


@pytest.fixture
def priced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    """A box with two A100s at $1.89 per device-hour and one cpu slot (and, as conftest's `api`,
    a Hugging Face cache of config-only models for jobs submitted to it)."""
    monkeypatch.setenv("HF_HUB_CACHE", str(api_test_cache(tmp_path / "hf-cache")))
    settings = Settings(data_dir=tmp_path / "data", gpus="none", price_per_hour=PRICES)
    box = Box.open(settings, build_inventory("A100-80GB:2", 1, settings.prices()))
    with TestClient(create_app(box, run_jobs=False)) as client:
        _, key = box.store.create_api_key("test")
        yield Api(client, key, box)


@pytest.fixture
def clouds(tmp_path) -> Iterator[dict]:
    started = {
        "runpod": RunPodStandIn.start(tmp_path / "runpod"),
        "lambda": LambdaStandIn.start(tmp_path / "lambda"),
        "prime_intellect": PrimeStandIn.start(tmp_path / "prime"),
    }
    yield started
    for stand_in in started.values():
        stand_in.stop()


def configure(api, name: str, stand_in) -> None:
    r = api.put(f"/v1/settings/providers/{name}", json={"api_key": stand_in.api_key, "base_url": stand_in.url})
    assert r.status_code == 200 and r.json()["warning"] is None, r.text


def estimate(api, **params) -> httpx.Response:
    return api.get("/v1/cost/estimate", params=params)


def error_of(response: httpx.Response) -> dict:
    assert response.status_code == 400, response.text
    return response.json()["error"]


# -- cost estimates ---------------------------------------------------------------------------------


def test_local_devices_cost_the_price_per_hour_of_the_box(priced):
    body = estimate(priced, gpu_type="A100-80GB", gpu_count=2, duration_minutes=90, markup=1.3).json()
    assert body == {
        "object": "cost_estimate",
        "provider": "local",
        "gpu_type": "A100-80GB",
        "gpu_count": 2,
        "duration_minutes": 90.0,
        "region": "local",
        "price_per_hr": 3.78,
        "price_per_gpu_hr": 1.89,
        "estimated_cost_usd": 5.67,  # 2 x 1.89 x 1.5 h; the client's markup is not the box's
        "available": True,
        "offers": [],
        "currency": "usd",
    }
    # The defaults are the official client's: one GPU for an hour.
    assert estimate(priced, gpu_type="A100-80GB", provider="local").json()["estimated_cost_usd"] == 1.89
    assert estimate(priced, gpu_type="cpu").json()["estimated_cost_usd"] == 0.0


def test_local_devices_held_by_a_job_are_not_available_now(priced):
    job = priced.job(gpu={"type": "A100-80GB", "count": 2})
    # as the runner places it
    priced.store.update_job(job["id"], status="running", gpu={"type": "A100-80GB", "count": 2}, devices=[0, 1])
    body = estimate(priced, gpu_type="A100-80GB").json()
    assert body["provider"] == "local" and body["available"] is False


def test_clouds_are_priced_at_their_live_quotes_cheapest_first(priced, clouds):
    for name, stand_in in clouds.items():
        configure(priced, name, stand_in)
    # The box has no H100: the cheapest in-stock offer (Lambda and Prime at $2.49, RunPod $2.99;
    # a tie goes by name, as the runner's offer order does).
    body = estimate(priced, gpu_type="H100-80GB", duration_minutes=30).json()
    assert (body["provider"], body["price_per_hr"], body["estimated_cost_usd"]) == ("lambda", 2.49, 1.245), body
    assert [o["provider"] for o in body["offers"]] == ["lambda", "prime_intellect", "runpod"]
    assert [o["price_per_hr"] for o in body["offers"]] == [2.49, 2.49, 2.99]
    assert all(o["available"] for o in body["offers"])
    # A named provider is priced on its own quote, at the count asked for (for all the GPUs).
    body = estimate(priced, gpu_type="H100-80GB", gpu_count=2, provider="runpod").json()
    assert (body["provider"], body["price_per_hr"], body["price_per_gpu_hr"]) == ("runpod", 5.98, 2.99)
    assert body["region"] == "US-KS-2" and body["estimated_cost_usd"] == 5.98
    # A type the box has stays on the box, as a submitted job would; a named cloud prices the cloud.
    assert estimate(priced, gpu_type="A100-80GB").json()["provider"] == "local"
    assert estimate(priced, gpu_type="A100-80GB", provider="prime_intellect").json()["price_per_hr"] == 1.45
    # A new quote is seen once the provider is asked again (after a new save here).
    clouds["lambda"].catalogue[0].price_cents_per_hour = 199
    configure(priced, "lambda", clouds["lambda"])
    assert estimate(priced, gpu_type="H100-80GB").json()["price_per_hr"] == 1.99


@pytest.mark.parametrize(
    "params, code, param",
    [
        ({}, "missing_field", "gpu_type"),
        ({"gpu_type": "A100-80GB", "gpu_count": 0}, "invalid_value", "gpu_count"),
        ({"gpu_type": "A100-80GB", "gpu_count": "two"}, "invalid_value", "gpu_count"),
        ({"gpu_type": "A100-80GB", "duration_minutes": -5}, "invalid_value", "duration_minutes"),
        ({"gpu_type": "A100-80GB", "gpu_count": 3}, "gpu_unavailable", "gpu_count"),
        ({"gpu_type": "H100-80GB"}, "gpu_unavailable", "gpu_type"),
        ({"gpu_type": "H100-80GB", "provider": "local"}, "gpu_unavailable", "gpu_type"),
        ({"gpu_type": "H100-80GB", "provider": "aws"}, "provider_unavailable", "provider"),
        ({"gpu_type": "H100-80GB", "provider": "runpod"}, "provider_not_configured", "provider"),
        ({"gpu_type": "H100-80GB", "provider": "slurm"}, "provider_not_configured", "provider"),
    ],
)
def test_an_estimate_that_cannot_be_made_is_a_400_naming_the_parameter(priced, params, code, param):
    error = error_of(estimate(priced, **params))
    assert (error["code"], error["param"]) == (code, param), error


def test_a_type_no_one_has_lists_what_exists(priced, clouds):
    configure(priced, "runpod", clouds["runpod"])
    error = error_of(estimate(priced, gpu_type="B200-192GB"))
    assert error["code"] == "gpu_unavailable"
    assert "A100-80GB x2" in error["message"] and "H100-80GB x1 at runpod $2.99/h" in error["message"]


# -- availability -----------------------------------------------------------------------------------


def test_availability_lists_local_devices_and_every_providers_quotes(priced, clouds):
    for name, stand_in in clouds.items():
        configure(priced, name, stand_in)
    body = priced.get("/v1/gpu/availability").json()
    assert body["object"] == "list"
    rows = {(r["provider"], r["gpu_type"], r["gpu_count"]): r for r in body["availability"]}
    assert rows["local", "A100-80GB", 2] == {
        "provider": "local",
        "gpu_type": "A100-80GB",
        "region": "local",
        "gpu_count": 2,
        "available": 2,
        "status": "available",
        "price_per_hr": 1.89,
        "price_per_gpu_hr": 1.89,
        "detail": None,
    }
    assert rows["runpod", "H100-80GB", 1]["price_per_hr"] == 2.99
    assert rows["runpod", "H100-80GB", 1]["detail"] == "NVIDIA H100 80GB HBM3"
    assert rows["runpod", "L4-24GB", 1]["status"] == "unavailable" and rows["runpod", "L4-24GB", 1]["available"] == 0
    eight = rows["lambda", "H100-80GB", 8]
    assert (eight["price_per_hr"], eight["price_per_gpu_hr"], eight["available"]) == (23.92, 2.99, 8)
    assert rows["prime_intellect", "RTX4090-24GB", 1]["status"] == "unavailable"
    assert [p["status"] for p in body["providers"]] == ["ok", "ok", "ok"]
    # The official client's filters
    only = priced.get("/v1/gpu/availability", params={"provider": "lambda", "gpu_type": "h100-80gb"}).json()
    assert {(r["provider"], r["gpu_type"]) for r in only["availability"]} == {("lambda", "H100-80GB")}
    assert [p["provider"] for p in only["providers"]] == ["lambda"]
    local = priced.get("/v1/gpu/availability", params={"region": "local"}).json()["availability"]
    assert {r["gpu_type"] for r in local} == {"A100-80GB", "cpu"}


def test_a_provider_that_fails_is_reported_and_the_others_still_listed(priced, clouds):
    configure(priced, "runpod", clouds["runpod"])
    configure(priced, "prime_intellect", clouds["prime_intellect"])
    clouds["prime_intellect"].fail(count=1, status=500)
    response = priced.get("/v1/gpu/availability")
    assert response.status_code == 200
    body = response.json()
    providers = {r["provider"] for r in body["availability"]}
    assert providers == {"local", "runpod"}
    status = {p["provider"]: p for p in body["providers"]}
    assert status["runpod"] == {"provider": "runpod", "status": "ok", "detail": None}
    assert status["prime_intellect"]["status"] == "error" and "HTTP 500" in status["prime_intellect"]["detail"]
    # A key the provider stopped accepting is reported the same way, without the key.
    clouds["runpod"].api_key = "rotated-elsewhere"
    configure(priced, "prime_intellect", clouds["prime_intellect"])  # a new save: nothing cached
    body = priced.get("/v1/gpu/availability").json()
    status = {p["provider"]: p for p in body["providers"]}
    assert status["runpod"]["status"] == "error" and "refused" in status["runpod"]["detail"]
    assert {r["provider"] for r in body["availability"]} == {"local", "prime_intellect"}


def test_slurm_partitions_are_listed_and_priced(priced):
    """A cluster as sinfo showed it (the Slurm tests run a real one): one partition with 3 of 4
    GPUs idle on a node, one drained."""
    cluster = Cluster(["gpu", "big"], {}, prices={"H100-80GB": 2.5})
    cluster.nodes = [
        Node("g1", "gpu", "h100", "H100-80GB", 4, 1, 64, 512_000, "mixed"),
        Node("b1", "big", "h100", "H100-80GB", 8, 0, 64, 512_000, "drained"),
    ]
    cluster.read_at = time.monotonic()
    priced.box.placement.cluster = cluster
    rows = {
        r["region"]: r for r in priced.get("/v1/gpu/availability", params={"provider": "slurm"}).json()["availability"]
    }
    assert rows["gpu"] == {
        "provider": "slurm",
        "gpu_type": "H100-80GB",
        "region": "gpu",
        "gpu_count": 4,
        "available": 3,
        "status": "available",
        "price_per_hr": 10.0,
        "price_per_gpu_hr": 2.5,
        "detail": "1 node(s), 1 taking jobs",
    }
    assert (rows["big"]["status"], rows["big"]["available"]) == ("unavailable", 0)
    # The box has no H100 of its own: Slurm is where such a job goes, at its price.
    body = estimate(priced, gpu_type="H100-80GB", gpu_count=2, duration_minutes=30).json()
    assert (body["provider"], body["region"], body["price_per_hr"], body["estimated_cost_usd"]) == (
        "slurm",
        "gpu",
        5.0,
        2.5,
    )
    assert body["available"] is True
    assert estimate(priced, gpu_type="H100-80GB", gpu_count=4).json()["available"] is False


# -- the official client against a real server ---------------------------------------------------


def test_veri_sdk_reads_the_estimate_and_the_availability(tmp_path, clouds, monkeypatch):
    from veri_sdk import Client
    from veri_sdk.client import VeriRequestError

    monkeypatch.setenv("HOME", str(tmp_path))
    server = Server(tmp_path / "data", tmp_path / "serve.log", "--gpus", "A100-80GB:1", "--price-per-hour", PRICES)
    try:
        key = KEY.findall(server.start())[0]
        http = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
        configure(http, "runpod", clouds["runpod"])
        client = Client(api_key=key, base_url=server.url)

        local = client.cost.estimate(gpu_type="A100-80GB", duration_minutes=120)
        assert (local["provider"], local["estimated_cost_usd"]) == ("local", 3.78)
        cloud = client.cost.estimate(gpu_type="H100-80GB", gpu_count=2, provider="runpod")
        assert (cloud["provider"], cloud["price_per_hr"], cloud["estimated_cost_usd"]) == ("runpod", 5.98, 5.98)
        with pytest.raises(VeriRequestError) as nowhere:
            client.cost.estimate(gpu_type="H100-80GB", provider="lambda")
        assert nowhere.value.code == "provider_not_configured"

        payload = client.gpu.availability()
        rows = payload["availability"]
        assert {"local", "runpod"} == {r["provider"] for r in rows}
        for row in rows:  # the fields the SDK's own `veri gpu availability` reads
            assert {"provider", "gpu_type", "region", "gpu_count", "status", "available", "price_per_hr"} <= set(row)
        h100 = client.gpu.availability(provider="runpod", gpu_type="H100-80GB")["availability"]
        assert [(r["gpu_type"], r["price_per_hr"], r["status"]) for r in h100] == [("H100-80GB", 2.99, "available")]
        assert clouds["runpod"].api_key not in server.output()
    finally:
        server.stop()

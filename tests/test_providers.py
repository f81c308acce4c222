"""The provider adapters against the stand-ins (tests/provider_standins.py): quotes in the API's
type names, cheapest-first offers across providers, a launched instance that a real SSH client
can log in to with the box's key, terminate, listing by name prefix, 429 Retry-After, Lambda's
launch pacing, and every failure sorted into its kind without the API key in any message."""

from __future__ import annotations

import getpass
import logging
import subprocess
import time

import pytest
from provider_standins import LambdaStandIn, PrimeStandIn, RunPodGpu, RunPodStandIn
from sshd import make_keypair

from veri_box.lambda_cloud import LambdaCloud
from veri_box.prime_intellect import PrimeIntellect, to_api, to_prime
from veri_box.providers import InstanceState, ProviderError, Providers
from veri_box.runpod import RunPod
from veri_box.store import Store

STAND_INS = {"runpod": RunPodStandIn, "lambda": LambdaStandIn, "prime_intellect": PrimeStandIn}


def adapter_for(name: str, api, key: str | None = None):
    key = key or api.api_key
    if name == "runpod":
        return RunPod(key, api.url)
    if name == "lambda":
        # The stand-in's instances take the user running the tests; a real Lambda instance's is ubuntu.
        return LambdaCloud(key, api.url, {"ssh_user": getpass.getuser()})
    return PrimeIntellect(key, api.url)


@pytest.fixture
def stand_ins(tmp_path):
    started = []

    def start(name: str, **kwargs):
        api = STAND_INS[name].start(tmp_path / name, **kwargs)
        started.append(api)
        return api

    yield start
    for api in started:
        api.stop()


@pytest.fixture
def keypair(tmp_path):
    return make_keypair(tmp_path / "box-key")


def wait_running(adapter, instance_id: str, timeout: float = 10) -> InstanceState:
    deadline = time.monotonic() + timeout
    while True:
        state = adapter.status(instance_id)
        if state.state == "running" or time.monotonic() > deadline:
            return state
        time.sleep(0.05)


def ssh(private_key, state: InstanceState, host_key_line: str, tmp_path, command: str = "echo logged-in-as-$(id -un)"):
    """Run a command over SSH the way the box would: its own key, the instance's pinned host key."""
    known = tmp_path / "known_hosts"
    host = state.ssh_host if state.ssh_port == 22 else f"[{state.ssh_host}]:{state.ssh_port}"
    known.write_text(f"{host} {host_key_line}\n")
    return subprocess.run(
        [
            "ssh", "-i", str(private_key), "-p", str(state.ssh_port),
            "-o", f"UserKnownHostsFile={known}", "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes", "-o", "ConnectTimeout=5",
            f"{state.ssh_user}@{state.ssh_host}", command,
        ],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip


# -- quotes and type names ------------------------------------------------------------------------


def test_runpod_quotes_in_api_type_names(stand_ins):
    api = stand_ins("runpod")
    runpod = RunPod(api.api_key, api.url)
    (h100,) = runpod.quote("H100-80GB", 2)
    assert (h100.gpu_type, h100.gpu_count, h100.provider_gpu) == ("H100-80GB", 2, "NVIDIA H100 80GB HBM3")
    assert h100.price_per_hr == pytest.approx(2 * 2.99) and h100.available and h100.region == "US-KS-2"
    every = {o.gpu_type: o for o in runpod.quote(None, None)}
    assert set(every) == {"H100-80GB", "A100-80GB", "RTX4090-24GB", "L4-24GB"}
    assert not every["L4-24GB"].available  # listed, but out of stock
    assert runpod.quote("H100-80GB", 16) == []  # no machine holds 16


def test_lambda_quotes_per_region_with_instance_prices(stand_ins):
    api = stand_ins("lambda")
    lam = LambdaCloud(api.api_key, api.url)
    (h100,) = lam.quote("H100-80GB", 1)
    assert (h100.provider_gpu, h100.price_per_hr, h100.region, h100.available) == (
        "gpu_1x_h100_pcie",
        2.49,
        "us-east-1",
        True,
    )
    (eight,) = lam.quote("H100-80GB", 8)
    assert (eight.provider_gpu, eight.price_per_hr) == ("gpu_8x_h100_sxm5", 23.92)  # the whole instance
    every = {(o.gpu_type, o.gpu_count): o for o in lam.quote(None, None)}
    assert set(every) == {("H100-80GB", 1), ("H100-80GB", 8), ("A100-40GB", 1), ("A6000-48GB", 1)}
    assert not every["A6000-48GB", 1].available and every["A6000-48GB", 1].region == ""


def test_prime_quotes_and_type_names_both_ways(stand_ins):
    api = stand_ins("prime_intellect")
    prime = PrimeIntellect(api.api_key, api.url)
    (h100,) = prime.quote("H100-80GB", 1)
    assert (h100.provider_gpu, h100.price_per_hr, h100.extra["cloudId"]) == ("H100_80GB", 2.49, "n3-H100x1")
    (rtx,) = prime.quote("RTX4090-24GB", 1)
    assert rtx.gpu_type == "RTX4090-24GB" and not rtx.available
    for api_name, prime_name in [
        ("H100-80GB", "H100_80GB"),
        ("A6000-48GB", "RTXA6000_48GB"),
        ("H200-141GB", "H200_141GB"),
    ]:
        assert to_prime(api_name) == prime_name
        assert to_api(prime_name, None) == api_name


# -- all providers at once ----------------------------------------------------------------------


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "veri-box.db")


def test_offers_cheapest_first_across_providers_in_stock_only(stand_ins, store):
    runpod, prime = stand_ins("runpod"), stand_ins("prime_intellect")
    store.put_integration("runpod", runpod.api_key, runpod.url)
    store.put_integration("prime_intellect", prime.api_key, prime.url)
    providers = Providers(store, None)
    assert providers.configured() == ["runpod", "prime_intellect"]

    offers = providers.offers("H100-80GB", 1)
    assert [(o.provider, o.price_per_hr) for o in offers] == [("prime_intellect", 2.49), ("runpod", 2.99)]
    assert [o.provider for o in providers.offers("H100-80GB", 1, only=["runpod"])] == ["runpod"]
    assert providers.offers("RTX4090-24GB", 1)[0].provider == "runpod"  # Prime's is out of stock
    assert providers.offers("B200-180GB", 1) == []

    # Cached for ~30 s: a price change shows only once the key (the row) changes.
    runpod.catalogue = [RunPodGpu("NVIDIA H100 80GB HBM3", 80, price=1.99)]
    assert providers.offers("H100-80GB", 1)[0].provider == "prime_intellect"
    time.sleep(0.01)
    store.put_integration("runpod", runpod.api_key, runpod.url)
    assert providers.offers("H100-80GB", 1)[0].provider == "runpod"

    every = providers.quotes()
    assert {o.provider for o in every} == {"runpod", "prime_intellect"}
    assert [o.price_per_hr for o in every] == sorted(o.price_per_hr for o in every)


def test_offers_skip_a_failing_provider_and_report_it(stand_ins, store, caplog):
    runpod, prime = stand_ins("runpod"), stand_ins("prime_intellect")
    store.put_integration("runpod", "sk-wrong-key-0123456789", runpod.url)
    store.put_integration("prime_intellect", prime.api_key, prime.url)
    providers = Providers(store, None)
    with caplog.at_level(logging.WARNING):
        offers = providers.offers("H100-80GB", 1)
    assert [o.provider for o in offers] == ["prime_intellect"]
    errors = providers.last_errors()
    assert list(errors) == ["runpod"] and "RunPod" in errors["runpod"] and "refused" in errors["runpod"]
    assert "provider runpod skipped (auth_failed)" in caplog.text
    assert "sk-wrong-key-0123456789" not in caplog.text + errors["runpod"]

    prime.fail(count=1, status=503)
    store.put_integration("runpod", runpod.api_key, runpod.url)
    offers = providers.offers("H100-80GB", 1)
    assert [o.provider for o in offers] == ["runpod"]
    assert list(providers.last_errors()) == ["prime_intellect"]  # runpod's error cleared by its success


def test_providers_are_asked_in_parallel(stand_ins, store):
    for name in ("runpod", "lambda", "prime_intellect"):
        api = stand_ins(name)
        api.delay_s = 1.0
        store.put_integration(name, api.api_key, api.url)
    started = time.monotonic()
    offers = Providers(store, None).offers("H100-80GB", 1)
    assert {o.provider for o in offers} == {"runpod", "lambda", "prime_intellect"}
    assert time.monotonic() - started < 2.5  # three 1 s answers at once, not one after another


def test_close_closes_every_client_and_a_later_call_gets_a_fresh_adapter(stand_ins, store):
    runpod, lambda_ = stand_ins("runpod"), stand_ins("lambda")
    store.put_integration("runpod", runpod.api_key, runpod.url)
    store.put_integration("lambda", lambda_.api_key, lambda_.url)
    providers = Providers(store, None)
    assert providers.offers("H100-80GB", 1)
    held = [providers.adapter("runpod"), providers.adapter("lambda")]
    providers.close()
    assert all(adapter.http.client.is_closed for adapter in held)
    # A call on a client closed under it (one in flight at shutdown) is a transient error, which
    # the remote executor retries, never a crash of the job's task.
    with pytest.raises(ProviderError) as err:
        held[0].status("pod-1")
    assert err.value.kind == "transient" and "shutting down" in str(err.value)
    fresh = providers.adapter("runpod")
    assert fresh is not held[0] and fresh.quote("H100-80GB", 1)


def test_an_unconfigured_provider_is_not_configured(store):
    providers = Providers(store, None)
    assert providers.configured() == [] and providers.offers("H100-80GB", 1) == []
    with pytest.raises(ProviderError) as err:
        providers.adapter("lambda")
    assert err.value.kind == "not_configured" and "/v1/settings/providers/lambda" in str(err.value)


# -- launch, SSH, terminate ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["runpod", "lambda", "prime_intellect"])
def test_launch_gives_an_ssh_endpoint_that_takes_the_box_key(name, stand_ins, keypair, tmp_path):
    api = stand_ins(name)
    adapter = adapter_for(name, api)
    private_key, public_key = keypair
    offer = next(o for o in adapter.quote("H100-80GB", 1) if o.available)
    launched = adapter.launch(offer, "vb-test-job1", public_key, None)
    assert launched.price_per_hr == offer.price_per_hr and launched.region

    first = adapter.status(launched.instance_id)
    assert first.state == "pending" and first.ssh_host is None  # still booting
    state = wait_running(adapter, launched.instance_id)
    assert state.state == "running" and state.ssh_user == "root"
    instance = api.instances[launched.instance_id]
    result = ssh(private_key, state, instance.sshd.host_key_line, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "logged-in-as-root"

    # Another key is refused: the instance authorizes only what the launch carried.
    other_key, _ = make_keypair(tmp_path / "other")
    assert ssh(other_key, state, instance.sshd.host_key_line, tmp_path).returncode == 255

    assert adapter.list_instances("vb-test-") == [(launched.instance_id, "vb-test-job1", "running")]
    adapter.terminate(launched.instance_id)
    adapter.terminate(launched.instance_id)  # safe twice
    assert adapter.status(launched.instance_id).state == "terminated"
    assert not instance.sshd.alive and adapter.list_instances("vb-test-") == []


@pytest.mark.parametrize("name", ["runpod", "prime_intellect"])
def test_list_instances_by_name_prefix(name, stand_ins, keypair):
    api = stand_ins(name)
    adapter = adapter_for(name, api)
    offer = next(o for o in adapter.quote("A100-80GB", 1) if o.available)
    mine = adapter.launch(offer, "vb-box1-job_a", keypair[1], None)
    adapter.launch(offer, "someone-elses-pod", keypair[1], None)
    assert [(i, n) for i, n, _ in adapter.list_instances("vb-box1-")] == [(mine.instance_id, "vb-box1-job_a")]
    if name == "prime_intellect":
        assert len(api.ssh_keys) == 1  # the box's key is uploaded once, not per pod


def test_a_killed_instance_reports_error_and_takes_its_processes(stand_ins, keypair, tmp_path):
    api = stand_ins("runpod")
    adapter = adapter_for("runpod", api)
    launched = adapter.launch(adapter.quote("H100-80GB", 1)[0], "vb-test-dies", keypair[1], None)
    state = wait_running(adapter, launched.instance_id)
    sshd = api.instances[launched.instance_id].sshd
    started = ssh(keypair[0], state, sshd.host_key_line, tmp_path, "setsid nohup sleep 4321 >/dev/null 2>&1 &\necho $!")
    assert started.returncode == 0
    assert subprocess.run(["pgrep", "-f", "^sleep 4321"], capture_output=True).returncode == 0

    api.kill(launched.instance_id)
    assert adapter.status(launched.instance_id).state == "error"
    assert subprocess.run(["pgrep", "-f", "^sleep 4321"], capture_output=True).returncode == 1
    adapter.terminate(launched.instance_id)


# -- rate limits --------------------------------------------------------------------------------


def test_429_retry_after_is_honoured(stand_ins):
    api = stand_ins("runpod")
    runpod = RunPod(api.api_key, api.url)
    api.rate_limit(count=1, retry_after_s=1)
    started = time.monotonic()
    assert runpod.quote("H100-80GB", 1)
    assert time.monotonic() - started >= 1.0
    assert [p for _, _, p in api.requests] == ["/v2/catalog/gpus", "/v2/catalog/gpus"]

    # A wait longer than the box sleeps through is handed back, with how long to wait.
    api.rate_limit(count=1, retry_after_s=120)
    started = time.monotonic()
    with pytest.raises(ProviderError) as err:
        runpod.quote("H100-80GB", 1)
    assert err.value.kind == "rate_limited" and err.value.retry_after_s == 120
    assert time.monotonic() - started < 1


def test_lambda_launches_are_paced(stand_ins, keypair):
    api = stand_ins("lambda")  # answers 429 to launches closer than 12 s, as Lambda documents
    lam = adapter_for("lambda", api)
    offer = lam.quote("H100-80GB", 1)[0]
    first = lam.launch(offer, "vb-pace-1", keypair[1], None)
    second = lam.launch(offer, "vb-pace-2", keypair[1], None)
    launches = [t for t, method, path in api.requests if path == "/api/v1/instance-operations/launch"]
    assert len(launches) == 2 and launches[1] - launches[0] >= 11.9  # paced, not refused and retried
    # The key was registered once, under the box's name for it, and named in both launches.
    assert len(api.ssh_keys) == 1 and api.ssh_keys[0]["name"].startswith("veri-box-")
    assert {i for i, _, _ in lam.list_instances("vb-pace-")} == {first.instance_id, second.instance_id}


# -- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["runpod", "lambda", "prime_intellect"])
def test_each_failure_has_its_kind_and_never_the_key(name, stand_ins, keypair, caplog):
    api = stand_ins(name)
    wrong = "sk-live-" + "9" * 24
    caplog.set_level(logging.DEBUG)
    failures = []

    with pytest.raises(ProviderError) as err:
        adapter_for(name, api, key=wrong).quote("H100-80GB", 1)
    assert err.value.kind == "auth_failed" and err.value.provider == name
    failures.append(err.value)

    adapter = adapter_for(name, api)
    offer = next(o for o in adapter.quote("H100-80GB", 1) if o.available)
    api.capacity_error = True
    with pytest.raises(ProviderError) as err:
        adapter.launch(offer, "vb-test-nocap", keypair[1], None)
    assert err.value.kind == "no_capacity"
    failures.append(err.value)
    api.capacity_error = False

    api.fail(count=1, status=500)
    with pytest.raises(ProviderError) as err:
        adapter.quote("H100-80GB", 1)
    assert err.value.kind == "transient" and "500" in str(err.value)
    failures.append(err.value)

    api.rate_limit(count=10, retry_after_s=600)
    with pytest.raises(ProviderError) as err:
        adapter.status("nope")
    assert err.value.kind == "rate_limited"
    failures.append(err.value)

    for failure in failures:
        assert api.api_key not in str(failure) and wrong not in str(failure)
    assert api.api_key not in caplog.text and wrong not in caplog.text


def test_a_key_echoed_back_by_a_provider_is_scrubbed(stand_ins):
    api = stand_ins("runpod")
    api.echo_token = True  # a provider that repeats the refused token in its error
    with pytest.raises(ProviderError) as err:
        RunPod("sk-echoed-secret-123456", api.url).quote(None, None)
    assert "sk-echoed-secret-123456" not in str(err.value) and "***" in str(err.value)


def test_an_unreachable_provider_is_transient(keypair):
    with pytest.raises(ProviderError) as err:
        RunPod("sk-test", "http://127.0.0.1:9").quote(None, None)
    assert err.value.kind == "transient"

"""The cloud providers' settings through the API and the dashboard, against the providers'
stand-ins on 127.0.0.1 (tests/provider_standins.py): the key is checked with the provider when
saved, refused with the provider's own reason, never returned, and the Settings page manages
the three providers and shows their live quotes."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from conftest import Api
from litestar.testing import TestClient
from provider_standins import LambdaStandIn, PrimeStandIn, RunPodStandIn
from serving import free_port
from test_dashboard import Browser

from veri_box.app import Box, create_app

STAND_INS = {"runpod": RunPodStandIn, "lambda": LambdaStandIn, "prime_intellect": PrimeStandIn}
# Each provider's own words when it refuses a key (the stand-ins answer as the docs say).
REFUSALS = {
    "runpod": "invalid bearer token",
    "lambda": "API key was invalid, expired, or deleted.",
    "prime_intellect": "Invalid API key",
}


@pytest.fixture
def clouds(tmp_path) -> Iterator[dict]:
    started = {name: cls.start(tmp_path / name) for name, cls in STAND_INS.items()}
    yield started
    for stand_in in started.values():
        stand_in.stop()


def error_of(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    return response.json()["error"]


def configure(api: Api, name: str, stand_in, **extra) -> httpx.Response:
    return api.put(
        f"/v1/settings/providers/{name}", json={"api_key": stand_in.api_key, "base_url": stand_in.url, **extra}
    )


def test_put_get_delete_round_trip_never_returns_the_key(api, clouds):
    runpod = clouds["runpod"]
    answers = [configure(api, "runpod", runpod, image="runpod/pytorch:2.8")]
    saved = answers[0].json()
    assert answers[0].status_code == 200, answers[0].text
    assert saved == {
        "object": "provider",
        "provider": "runpod",
        "configured": True,
        "key_hint": "..." + runpod.api_key[-4:],
        "base_url": runpod.url,
        "image": "runpod/pytorch:2.8",
        "updated_at": saved["updated_at"],
        "ssh_user": None,  # RunPod reports each pod's SSH user itself
        "warning": None,
    }
    assert any(path == "/v2/catalog/gpus" for _, _, path in runpod.requests), "the key was checked with RunPod"
    answers.append(api.get("/v1/settings/providers/runpod"))
    assert answers[-1].json() == saved
    answers.append(api.get("/v1/settings/providers/lambda"))
    assert answers[-1].json()["configured"] is False
    # Everything else that talks about providers must not leak it either.
    answers += [
        api.get("/v1/gpu/availability"),
        api.get("/v1/cost/estimate", params={"gpu_type": "H100-80GB"}),
        api.get("/schema/openapi.json"),
    ]
    answers.append(api.delete("/v1/settings/providers/runpod"))
    assert answers[-1].status_code == 200
    assert answers[-1].json() == {
        **saved,
        "configured": False,
        "key_hint": None,
        "base_url": None,
        "image": None,
        "updated_at": None,
    }
    answers.append(api.get("/v1/settings/providers/runpod"))
    assert answers[-1].json()["configured"] is False and api.store.get_integration("runpod") is None
    for answer in answers:
        assert runpod.api_key not in answer.text, answer.request.url


def test_a_key_the_provider_refuses_is_a_400_with_its_reason_and_nothing_is_stored(api, clouds):
    for name, stand_in in clouds.items():
        bad = api.put(f"/v1/settings/providers/{name}", json={"api_key": "not-the-key-0000", "base_url": stand_in.url})
        error = error_of(bad, 400)
        assert (error["code"], error["param"]) == ("provider_auth_failed", "api_key")
        assert REFUSALS[name] in error["message"], error
        assert "not-the-key-0000" not in bad.text
        assert api.get(f"/v1/settings/providers/{name}").json()["configured"] is False
    # A refused replacement leaves the working key in place.
    runpod = clouds["runpod"]
    hint = configure(api, "runpod", runpod).json()["key_hint"]
    error_of(api.put("/v1/settings/providers/runpod", json={"api_key": "wrong-key-12345", "base_url": runpod.url}), 400)
    assert api.get("/v1/settings/providers/runpod").json()["key_hint"] == hint
    assert api.store.get_integration("runpod")["api_key"] == runpod.api_key


def test_an_unknown_provider_is_404_on_every_method(api):
    for method in ("get", "delete"):
        error = error_of(getattr(api, method)("/v1/settings/providers/aws"), 404)
        assert error["code"] == "provider_not_found" and "runpod, lambda, prime_intellect" in error["message"]
    error = error_of(api.put("/v1/settings/providers/aws", json={"api_key": "k" * 20}), 404)
    assert error["code"] == "provider_not_found" and api.store.get_integration("aws") is None


@pytest.mark.parametrize(
    "body, code, param",
    [
        ({}, "missing_field", "api_key"),
        ({"api_key": ""}, "invalid_value", "api_key"),
        ({"api_key": "two words"}, "invalid_value", "api_key"),
        ({"api_key": "k" * 501}, "invalid_value", "api_key"),
        ({"api_key": "k" * 20, "base_url": "ftp://x"}, "invalid_value", "base_url"),
        ({"api_key": "k" * 20, "base_url": "http://[oops"}, "invalid_value", "base_url"),  # urlparse raises
        ({"api_key": "k" * 20, "image": "an image"}, "invalid_value", "image"),
        ({"api_key": "k" * 20, "region": "us"}, "unknown_field", "region"),
        ({"api_key": 12}, "invalid_value", "api_key"),
        ({"api_key": "k" * 20, "ssh_user": "ubuntu"}, "invalid_value", "ssh_user"),  # Lambda only
    ],
)
def test_bad_bodies_are_400s_naming_the_field(api, body, code, param):
    error = error_of(api.put("/v1/settings/providers/runpod", json=body), 400)
    assert (error["code"], error["param"]) == (code, param), error
    assert api.store.get_integration("runpod") is None


def test_lambda_takes_the_ssh_user_of_its_images_ubuntu_unless_told_otherwise(api, clouds):
    lambda_ = clouds["lambda"]
    assert api.get("/v1/settings/providers/lambda").json()["ssh_user"] == "ubuntu"
    saved = configure(api, "lambda", lambda_)
    assert saved.status_code == 200 and saved.json()["ssh_user"] == "ubuntu", saved.text
    saved = configure(api, "lambda", lambda_, ssh_user="admin")
    assert saved.status_code == 200 and saved.json()["ssh_user"] == "admin", saved.text
    assert api.get("/v1/settings/providers/lambda").json()["ssh_user"] == "admin"
    assert api.store.get_integration("lambda")["options"] == {"ssh_user": "admin"}
    assert "SSH user <code>admin</code>" in Browser(api).get("/settings").text  # the Settings page says so
    for bad in ("root; rm -rf /", "Ubuntu", "1user", "x" * 33):
        error = error_of(configure(api, "lambda", lambda_, ssh_user=bad), 400)
        assert (error["code"], error["param"]) == ("invalid_value", "ssh_user"), error
    # A refused value changes nothing; a PUT without it goes back to the default.
    assert api.get("/v1/settings/providers/lambda").json()["ssh_user"] == "admin"
    assert configure(api, "lambda", lambda_).json()["ssh_user"] == "ubuntu"


def test_the_box_closes_the_provider_clients_when_it_stops(settings, clouds):
    box = Box.open(settings)
    with TestClient(create_app(box, run_jobs=False)) as client:
        _, key = box.store.create_api_key("t")
        runpod = clouds["runpod"]
        headers = {"Authorization": f"Bearer {key}"}
        body = {"api_key": runpod.api_key, "base_url": runpod.url}
        assert client.put("/v1/settings/providers/runpod", json=body, headers=headers).status_code == 200
        assert client.get("/v1/gpu/availability", headers=headers).status_code == 200
        adapter = box.placement.providers.adapter("runpod")
        assert not adapter.http.client.is_closed
    assert adapter.http.client.is_closed


def test_invalid_json_is_a_400(api):
    bad = api.put("/v1/settings/providers/runpod", content=b"{", headers={"Content-Type": "application/json"})
    assert error_of(bad, 400)["code"] == "invalid_json"


def test_a_provider_that_cannot_be_reached_keeps_the_key_with_a_warning(api, clouds):
    down = f"http://127.0.0.1:{free_port()}"
    saved = api.put("/v1/settings/providers/lambda", json={"api_key": "lambda-key-0000", "base_url": down})
    assert saved.status_code == 200, saved.text
    assert saved.json()["configured"] is True and "could not be checked" in saved.json()["warning"]
    assert "Lambda" in saved.json()["warning"] and "lambda-key-0000" not in saved.text
    # A provider failing with a 5xx cannot say either.
    prime = clouds["prime_intellect"]
    prime.fail(count=1, status=503)
    saved = configure(api, "prime_intellect", prime)
    assert saved.status_code == 200 and "503" in saved.json()["warning"]
    # A later GET is a plain status: the warning belonged to that save.
    assert api.get("/v1/settings/providers/prime_intellect").json()["warning"] is None


# -- the dashboard ---------------------------------------------------------------------------------


@pytest.fixture
def web(api: Api) -> Browser:
    return Browser(api)


def test_the_settings_page_manages_providers_and_shows_their_quotes(web, clouds):
    page = web.get("/settings").text
    for title in ("RunPod", "Lambda", "Prime Intellect"):
        assert f"<h3>{title}</h3>" in page
    assert page.count("Not configured.") >= 3
    assert 'hx-get="/settings/quotes"' in page and 'hx-trigger="load"' in page, "quotes load after the page"
    assert "No cloud provider is configured" in web.get("/settings/quotes").text

    runpod, prime = clouds["runpod"], clouds["prime_intellect"]
    refused = web.post("/settings/providers/runpod", data={"api_key": "wrong-key-9999", "base_url": runpod.url})
    assert 'data-code="provider_auth_failed"' in refused.text and "invalid bearer token" in refused.text
    assert "<code>api_key</code>" in refused.text and "wrong-key-9999" not in refused.text

    saved = web.post(
        "/settings/providers/runpod", data={"api_key": runpod.api_key, "base_url": runpod.url, "image": "img:1"}
    )
    assert "RunPod key saved." in saved.text and "..." + runpod.api_key[-4:] in saved.text and "img:1" in saved.text
    assert runpod.api_key not in saved.text
    web.post("/settings/providers/prime_intellect", data={"api_key": prime.api_key, "base_url": prime.url})
    assert web.api.get("/v1/settings/providers/prime_intellect").json()["configured"] is True
    assert runpod.api_key not in web.get("/settings").text

    quotes = web.get("/settings/quotes").text
    assert 'id="quote-table"' in quotes and "error-box" not in quotes
    # provider x GPU type x price x availability, from both providers' live catalogues
    assert "H100-80GB" in quotes and "$2.99" in quotes and "$2.49" in quotes
    assert "prime_intellect" in quotes and "in stock" in quotes and "unavailable" in quotes

    # A provider failing is named, and the other's prices are still shown.
    runpod.catalogue[0].price = 3.19
    # Saved again: quotes are cached per saved row, so the next look asks both providers anew.
    web.post("/settings/providers/runpod", data={"api_key": runpod.api_key, "base_url": runpod.url})
    prime.fail(count=1, status=500)
    quotes = web.get("/settings/quotes").text
    assert 'data-provider="prime_intellect"' in quotes and "500" in quotes and "$3.19" in quotes

    # Lambda's form carries its SSH user: saving the key again keeps a user set before.
    lambda_ = clouds["lambda"]
    page = web.get("/settings").text
    assert 'name="ssh_user"' in page and page.count('name="ssh_user"') == 1  # Lambda only
    fields = {"api_key": lambda_.api_key, "base_url": lambda_.url, "ssh_user": "admin"}
    assert "Lambda key saved." in web.post("/settings/providers/lambda", data=fields).text
    assert web.api.get("/v1/settings/providers/lambda").json()["ssh_user"] == "admin"
    assert 'value="admin"' in web.get("/settings").text

    removed = web.post("/settings/providers/runpod/delete")
    assert "RunPod key removed." in removed.text and web.api.store.get_integration("runpod") is None


def test_provider_forms_need_the_csrf_token_and_a_known_provider(web, clouds):
    runpod = clouds["runpod"]
    stale = web.client.post("/settings/providers/runpod", data={"api_key": runpod.api_key, "base_url": runpod.url})
    assert stale.status_code == 403 and web.api.store.get_integration("runpod") is None
    assert web.client.post("/settings/providers/runpod/delete").status_code == 403
    unknown = web.post("/settings/providers/aws", data={"api_key": "k" * 20})
    assert 'data-code="provider_not_found"' in unknown.text
    assert 'data-code="provider_not_found"' in web.post("/settings/providers/aws/delete").text

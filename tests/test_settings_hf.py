"""The settings page's Hugging Face panel: the token saved through the same service as the API's
PUT /v1/settings/integrations/huggingface (checked with whoami on a Hub stand-in on 127.0.0.1),
a refused token shown as the API's error with nothing saved, Remove, and no panel for a member."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import make_settings
from hub_standin import HubStandIn
from test_dashboard import Browser

from veri_box.settings import Settings

GOOD, BAD, READ = "hf_good_token_0123456789", "hf_revoked_token_0123456789", "hf_read_token_0123456789"


@pytest.fixture
def hub(tmp_path: Path):
    with HubStandIn(tmp_path / "hub", tokens={GOOD: "alice", READ: "alice"}, roles={READ: "read"}) as h:
        yield h


@pytest.fixture
def settings(tmp_path: Path, hub: HubStandIn) -> Settings:
    return make_settings(tmp_path, hf_endpoint=hub.url)


def test_the_hugging_face_token_is_set_and_removed_from_the_settings_page(api, hub):
    web = Browser(api)
    page = web.get("/settings").text
    assert 'id="huggingface"' in page and "Not configured." in page.split('id="huggingface"')[1]

    r = web.post("/settings/huggingface", data={"token": BAD})
    assert r.status_code == 200 and 'data-code="hf_token_invalid"' in r.text
    assert BAD not in r.text and api.store.get_integration("huggingface") is None

    # A read token: jobs could push nowhere with it, so it is refused as the API refuses it.
    r = web.post("/settings/huggingface", data={"token": READ})
    assert r.status_code == 200 and 'data-code="hf_token_read_only"' in r.text and "write access" in r.text
    assert READ not in r.text and api.store.get_integration("huggingface") is None

    r = web.post("/settings/huggingface", data={"token": GOOD})
    assert r.status_code == 200 and "jobs can push to the Hub as alice" in r.text
    assert "whoami" in hub.routes_called()
    assert api.get("/v1/settings/integrations/huggingface").json()["username"] == "alice"
    page = web.get("/settings").text
    assert 'id="hf-configured"' in page and "<code>alice</code>" in page and GOOD not in page
    assert 'id="hf-can-push">Jobs may push to: <code>alice</code> (' in page  # where jobs may push

    r = web.post("/settings/huggingface/delete")
    assert r.status_code == 200 and "Hugging Face token removed." in r.text
    assert api.get("/v1/settings/integrations/huggingface").json()["configured"] is False


def test_a_member_sees_no_hugging_face_panel_and_cannot_post_one(api):
    _, key = api.store.create_api_key("member", "member")
    member = Browser.__new__(Browser)
    member.api, member.client = api, api.client
    from test_dashboard import csrf_of, login

    assert login(api, key).status_code == 303
    member.csrf = csrf_of(api.client.get("/jobs").text)
    assert 'id="huggingface"' not in member.get("/settings").text
    r = member.post("/settings/huggingface", data={"token": GOOD})
    # An htmx request gets the 403 in the page's flash area, with 200 (dashboard_errors).
    assert "forbidden" in r.text and api.store.get_integration("huggingface") is None

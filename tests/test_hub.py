"""The Hugging Face Hub: the token setting (checked against whoami), hf_push at submit, and real
pushes of a real tiny GRPO LoRA job through huggingface_hub to a Hub stand-in on 127.0.0.1
(tests/hub_standin.py), whose received files are then loaded with PEFT from a copy."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from conftest import Api, finished, make_settings, run_until
from hf_cache import api_test_cache
from hub_standin import HubStandIn
from litestar.testing import TestClient

from veri_box.app import Box, create_app
from veri_box.settings import Settings

GOOD, OTHER, BAD = "hf_good_token_0123456789", "hf_bob_token_0123456789", "hf_revoked_token_0123456789"
READ, FINE, FINE_READ = "hf_read_token_0123456789", "hf_fine_token_0123456789", "hf_fine_read_token_0123456789"
SETTINGS_URL = "/v1/settings/integrations/huggingface"
# alice's organizations and her role in each, as the Hub's whoami-v2 lists them (roleInOrg).
ALICE_ORGS = {"veri-lab": "write", "helpers": "contributor", "bosses": "admin", "readers": "read"}


@pytest.fixture
def hub(tmp_path: Path):
    with HubStandIn(
        tmp_path / "hub",
        tokens={GOOD: "alice", OTHER: "bob", READ: "alice", FINE: "alice", FINE_READ: "alice"},
        orgs={"alice": ALICE_ORGS},
        roles={READ: "read", FINE: "fineGrained", FINE_READ: "fineGrained"},
        scoped={
            # a fine-grained token that writes to alice's repos only, and reads veri-lab's
            FINE: {"alice": ["repo.content.read", "repo.write"], "veri-lab": ["repo.content.read"]},
            FINE_READ: {"alice": ["repo.content.read"]},
        },
    ) as h:
        yield h


@pytest.fixture
def settings(tmp_path: Path, hub: HubStandIn) -> Settings:
    """conftest's `api` fixture on a box whose Hub is the stand-in."""
    return make_settings(tmp_path, hf_endpoint=hub.url)


def connect(api: Api, token: str = GOOD) -> dict:
    r = api.put(SETTINGS_URL, json={"token": token})
    assert r.status_code == 200, r.text
    return r.json()


# -- the integration --------------------------------------------------------------------------


def test_a_good_token_is_saved_with_its_user_and_never_shown_again(api, hub):
    assert api.get(SETTINGS_URL).json()["configured"] is False
    saved = connect(api)
    assert (saved["configured"], saved["username"]) == (True, "alice")
    assert "whoami" in hub.routes_called()
    shown = api.get(SETTINGS_URL)
    assert shown.json()["username"] == "alice"
    assert GOOD not in saved.__repr__() and GOOD not in shown.text
    assert GOOD not in api.get("/schema/openapi.json").text

    # Replacing it with another user's token names that user; deleting it forgets it.
    assert connect(api, OTHER)["username"] == "bob"
    gone = api.delete(SETTINGS_URL)
    assert gone.status_code == 200 and gone.json()["configured"] is False
    assert api.get(SETTINGS_URL).json() == {**gone.json()}
    assert api.store.get_integration("huggingface") is None


def test_a_token_the_hub_refuses_is_a_400_and_nothing_is_saved(api, hub):
    r = api.put(SETTINGS_URL, json={"token": BAD})
    assert r.status_code == 400
    error = r.json()["error"]
    assert (error["code"], error["param"]) == ("hf_token_invalid", "token")
    assert hub.url in error["message"] and BAD not in error["message"]
    assert api.get(SETTINGS_URL).json()["configured"] is False

    # A refused token does not replace a good one already saved.
    connect(api)
    assert api.put(SETTINGS_URL, json={"token": BAD}).status_code == 400
    assert api.get(SETTINGS_URL).json()["username"] == "alice"


@pytest.mark.parametrize(
    "body, code, param",
    [
        ({"token": "hf two words"}, "invalid_value", "token"),
        ({"token": ""}, "invalid_value", "token"),
        ({}, "missing_field", "token"),
        ({"token": GOOD, "username": "x"}, "unknown_field", "username"),
    ],
)
def test_malformed_token_bodies_are_400s(api, body, code, param):
    r = api.put(SETTINGS_URL, json=body)
    assert r.status_code == 400 and (r.json()["error"]["code"], r.json()["error"]["param"]) == (code, param)


def test_an_unreachable_hub_is_a_clear_400(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(api_test_cache(tmp_path / "hf-cache")))
    from serving import free_port

    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    box = Box.open(make_settings(tmp_path, hf_endpoint=endpoint))
    with TestClient(create_app(box, run_jobs=False)) as client:
        _, key = box.store.create_api_key("t")
        api = Api(client, key, box)
        started = time.monotonic()
        r = api.put(SETTINGS_URL, json={"token": GOOD})
        assert time.monotonic() - started < 10
        assert r.status_code == 400 and r.json()["error"]["code"] == "hf_hub_unreachable", r.text
        assert endpoint in r.json()["error"]["message"] and "--hf-endpoint" in r.json()["error"]["message"]
        assert api.get(SETTINGS_URL).json()["configured"] is False


# -- hf_push at submit --------------------------------------------------------------------------

LORA = {"lora_rank": 8, "max_steps": 1}


def test_hf_push_is_stored_on_the_job_and_shown_waiting(api):
    connect(api)
    job = api.job(hf_push={"repo": "alice/tiny-grpo", "artifact": "adapter"}, hyperparameters=LORA)
    push = job["hf_push"]
    assert (push["repo"], push["artifact"], push["private"], push["status"]) == (
        "alice/tiny-grpo",
        "adapter",
        True,
        "waiting",
    )
    assert job["hf_repo_url"] is None
    assert api.get(f"/v1/training_jobs/{job['id']}").json()["hf_push"] == push
    # A job without hf_push shows none, and an organization's namespace is a repo id like any other.
    assert api.job(hyperparameters=LORA)["hf_push"] is None
    org = api.job(hf_push={"repo": "veri-lab/m", "artifact": "merged", "private": False}, hyperparameters=LORA)
    assert (org["hf_push"]["artifact"], org["hf_push"]["private"]) == ("merged", False)


@pytest.mark.parametrize(
    "hf_push, hyperparameters, method, code, param",
    [
        (
            {"repo": "alice/m", "artifact": "adapter"},
            {"lora_rank": None, "lora_alpha": None},
            "grpo",
            "hf_push_incompatible",
            "hf_push.artifact",
        ),
        (
            {"repo": "alice/m", "artifact": "merged"},
            {"num_frames": 9},
            "sft_video_gen",
            "hf_push_incompatible",
            "hf_push.artifact",
        ),
        ({"repo": "no-namespace", "artifact": "adapter"}, LORA, "grpo", "invalid_value", "hf_push.repo"),
        ({"repo": "alice/has space", "artifact": "adapter"}, LORA, "grpo", "invalid_value", "hf_push.repo"),
        ({"repo": "alice/a..b", "artifact": "adapter"}, LORA, "grpo", "invalid_value", "hf_push.repo"),
        ({"repo": "a/b/c", "artifact": "adapter"}, LORA, "grpo", "invalid_value", "hf_push.repo"),
        ({"repo": "alice/m", "artifact": "weights"}, LORA, "grpo", "invalid_value", "hf_push.artifact"),
        ({"repo": "alice/m"}, LORA, "grpo", "missing_field", "hf_push.artifact"),
        ({"repo": "alice/m", "artifact": "adapter", "branch": "x"}, LORA, "grpo", "unknown_field", "hf_push.branch"),
    ],
)
def test_incoherent_hf_push_is_a_400_at_submit(api, hf_push, hyperparameters, method, code, param):
    connect(api)
    dataset = api.dataset() if method == "grpo" else _video_dataset(api)
    body = {
        "base_model": "Qwen/Qwen3-4B" if method == "grpo" else "veri-box/tiny-cogvideox",
        "dataset_id": dataset,
        "gpu": {"type": "cpu", "count": 1},
        "method": method,
        "hyperparameters": hyperparameters,
        "hf_push": hf_push,
    }
    if method == "grpo":
        body["reward_function_id"] = api.reward_function()
    r = api.post("/v1/training_jobs", json=body)
    assert r.status_code == 400, r.text
    assert (r.json()["error"]["code"], r.json()["error"]["param"]) == (code, param), r.json()
    assert not api.store.any_job()


def _video_dataset(api: Api) -> str:
    from trainers.tiny_video import squares_zip  # the video tests' own small clips

    r = api.upload_dataset(squares_zip(n=2), filename="clips.zip", name="squares")
    assert r.status_code == 200, r.text
    return r.json()["id"]


def test_hf_push_without_the_integration_is_a_400(api):
    r = api.post(
        "/v1/training_jobs",
        json={
            "base_model": "Qwen/Qwen3-4B",
            "dataset_id": api.dataset(),
            "reward_function_id": api.reward_function(),
            "gpu": {"type": "cpu", "count": 1},
            "hyperparameters": LORA,
            "hf_push": {"repo": "alice/m", "artifact": "adapter"},
        },
    )
    assert r.status_code == 400
    error = r.json()["error"]
    assert (error["code"], error["param"]) == ("integration_not_configured", "hf_push")
    assert SETTINGS_URL in error["message"]


def _submit(api: Api, repo: str, dataset: str, rf: str):
    return api.post(
        "/v1/training_jobs",
        json={
            "base_model": "Qwen/Qwen3-4B",
            "dataset_id": dataset,
            "reward_function_id": rf,
            "gpu": {"type": "cpu", "count": 1},
            "hyperparameters": LORA,
            "hf_push": {"repo": repo, "artifact": "adapter"},
        },
    )


def _jobs(api: Api) -> int:
    return len(api.get("/v1/training_jobs?limit=100").json()["data"])


def test_hf_push_to_a_namespace_the_token_cannot_write_to_is_a_400_naming_those_it_can(api, hub):
    """Checked at submit, not after an hour of training: the token's user and the organizations
    where whoami says it has a write, contributor or admin role; a read role or someone else's
    namespace is a 400 naming where it could push, and no job is stored."""
    connect(api)
    dataset, rf = api.dataset(), api.reward_function()
    for repo in ("readers/m", "someone-else/m", "bob/m"):
        r = _submit(api, repo, dataset, rf)
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert (error["code"], error["param"]) == ("hf_namespace_forbidden", "hf_push.repo"), error
        namespace = repo.split("/")[0]
        assert f"cannot write to the namespace '{namespace}'" in error["message"]
        assert "it can write to: alice, veri-lab, helpers, bosses." in error["message"]
        assert "set the token again" in error["message"] and SETTINGS_URL in error["message"]
    assert _jobs(api) == 0 and not api.store.any_job()
    assert "create_repo" not in hub.routes_called()  # refused by the box, not found out from the Hub

    for repo in ("alice/m", "veri-lab/m", "helpers/m", "bosses/m", "Veri-Lab/m2"):
        r = _submit(api, repo, dataset, rf)
        assert r.status_code == 200, (repo, r.text)
        assert r.json()["hf_push"]["repo"] == repo
    assert _jobs(api) == 5


def test_joining_an_organization_counts_once_the_token_is_set_again(api, hub):
    connect(api)
    dataset, rf = api.dataset(), api.reward_function()
    hub.orgs["alice"] = {**ALICE_ORGS, "new-lab": "write"}  # alice joins new-lab on the Hub
    r = _submit(api, "new-lab/m", dataset, rf)
    assert r.status_code == 400 and r.json()["error"]["code"] == "hf_namespace_forbidden"
    assert "new-lab" not in api.get(SETTINGS_URL).json()["can_push_to"]
    connect(api)  # the same token, set again: whoami is read again
    assert api.get(SETTINGS_URL).json()["can_push_to"] == ["alice", "veri-lab", "helpers", "bosses", "new-lab"]
    assert _submit(api, "new-lab/m", dataset, rf).status_code == 200
    hub.orgs["alice"] = {**ALICE_ORGS, "new-lab": "read"}  # and demoted to read there
    connect(api)
    r = _submit(api, "new-lab/m2", dataset, rf)
    assert r.status_code == 400 and "it can write to: alice, veri-lab, helpers, bosses." in r.json()["error"]["message"]


def test_a_fine_grained_token_pushes_only_where_it_has_repo_write(api, hub):
    assert connect(api, FINE)["username"] == "alice"
    dataset, rf = api.dataset(), api.reward_function()
    assert _submit(api, "alice/m", dataset, rf).status_code == 200
    # veri-lab: alice may write there, this token only reads it; bosses: not in the token's scope.
    for repo in ("veri-lab/m", "bosses/m"):
        r = _submit(api, repo, dataset, rf)
        assert r.status_code == 400 and r.json()["error"]["code"] == "hf_namespace_forbidden", r.text
        assert "it can write to: alice." in r.json()["error"]["message"]
    assert _jobs(api) == 1


@pytest.mark.parametrize("token", [READ, FINE_READ])
def test_a_token_that_can_write_nowhere_is_refused_when_set(api, hub, token):
    connect(api)
    r = api.put(SETTINGS_URL, json={"token": token})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert (error["code"], error["param"]) == ("hf_token_read_only", "token")
    assert "write access" in error["message"] and token not in error["message"]
    # The token set before stays, and with it where jobs may push.
    assert api.store.get_integration("huggingface")["api_key"] == GOOD


def test_a_token_set_before_the_box_kept_its_namespaces_is_checked_against_its_user_and_orgs(api, hub):
    """What an older box stored at PUT: the user and its organizations' names, no roles. Every
    organization counts (their roles are unknown); a stranger's namespace is refused."""
    api.store.put_integration("huggingface", GOOD, hub.url, {"username": "alice", "orgs": ["veri-lab", "readers"]})
    assert api.get(SETTINGS_URL).json()["can_push_to"] is None  # not known until the token is set again
    dataset, rf = api.dataset(), api.reward_function()
    for repo in ("alice/m", "veri-lab/m", "readers/m"):
        assert _submit(api, repo, dataset, rf).status_code == 200, repo
    r = _submit(api, "someone-else/m", dataset, rf)
    assert r.status_code == 400 and r.json()["error"]["code"] == "hf_namespace_forbidden"
    assert "it can write to: alice, veri-lab, readers." in r.json()["error"]["message"]


def test_a_later_push_to_a_namespace_the_token_cannot_write_to_is_a_400(api, hub):
    from veri_box.store import now

    connect(api)
    job_id = api.job(hyperparameters=LORA)["id"]
    output = api.settings.data_dir / "jobs" / job_id / "output"  # as a trainer left it
    output.mkdir(parents=True)
    (output / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    api.store.transition_job(job_id, "completed", allowed_from=["queued"], completed_at=now())
    for repo in ("someone-else/m", "readers/m"):
        r = api.post(f"/v1/training_jobs/{job_id}/push", json={"repo": repo, "artifact": "adapter"})
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert (error["code"], error["param"]) == ("hf_namespace_forbidden", "repo")
        assert "it can write to: alice, veri-lab, helpers, bosses." in error["message"]
    # The later push's other 400s name the body's field as well (`repo`, not `repo.repo`).
    r = api.post(f"/v1/training_jobs/{job_id}/push", json={"repo": "no-namespace", "artifact": "adapter"})
    assert (r.json()["error"]["code"], r.json()["error"]["param"]) == ("invalid_value", "repo")
    assert api.get(f"/v1/training_jobs/{job_id}").json()["hf_push"] is None
    assert not [e for e in events(api, job_id) if e["event_type"].startswith("hf_push")]
    assert "create_repo" not in hub.routes_called()

    r = api.post(f"/v1/training_jobs/{job_id}/push", json={"repo": "veri-lab/m", "artifact": "adapter"})
    assert r.status_code == 200 and r.json()["status"] == "pushing", r.text
    deadline = time.monotonic() + 60
    while api.store.get_job(job_id)["hf_push_state"]["status"] == "pushing" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert api.get(f"/v1/training_jobs/{job_id}").json()["hf_push"]["status"] == "completed"
    assert set(hub.repos["veri-lab/m"].files) == {"adapter_config.json"}


def test_push_later_needs_a_completed_job(api):
    connect(api)
    job = api.job(hyperparameters=LORA)
    r = api.post(f"/v1/training_jobs/{job['id']}/push", json={"repo": "alice/m", "artifact": "adapter"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "job_not_completed"
    r = api.post("/v1/training_jobs/job_nope/push", json={"repo": "alice/m", "artifact": "adapter"})
    assert r.status_code == 404


def test_at_start_up_an_interrupted_push_fails_and_a_missed_one_starts(api, hub):
    """What the server's start (hub.recover, after the runner's) does with pushes a stopped
    server left: one it was running is failed with "push again"; a job that completed while no
    server ran is pushed now."""
    from veri_box import hub as hub_service
    from veri_box.store import now

    connect(api)
    asked = {"repo": "alice/cut-short", "artifact": "adapter", "private": True}
    cut = api.job(hf_push=asked, hyperparameters=LORA)["id"]
    api.store.start_hf_push(cut, asked, {"status": "pushing", "updated_at": now()}, asked)
    missed = api.job(hf_push={"repo": "alice/missed", "artifact": "adapter"}, hyperparameters=LORA)["id"]
    output = api.settings.data_dir / "jobs" / missed / "output"  # as a trainer left it
    output.mkdir(parents=True)
    (output / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    (output / "adapter_model.safetensors").write_bytes(b"\0" * 4096)
    api.store.transition_job(missed, "completed", allowed_from=["queued"], completed_at=now())

    hub_service.recover(api.box)
    failed = api.get(f"/v1/training_jobs/{cut}").json()["hf_push"]
    assert failed["status"] == "failed" and "server stopped" in failed["error"] and f"/{cut}/push" in failed["error"]
    assert [e["event_type"] for e in events(api, cut)][-1] == "hf_push_failed"
    deadline = time.monotonic() + 60
    while api.store.get_job(missed)["hf_push_state"]["status"] == "pushing" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert api.get(f"/v1/training_jobs/{missed}").json()["hf_push"]["status"] == "completed"
    assert set(hub.repos["alice/missed"].files) == {"adapter_config.json", "adapter_model.safetensors"}


# -- real pushes of a real tiny job ----------------------------------------------------------------


def _box(tmp_path: Path, monkeypatch, endpoint: str) -> Box:
    monkeypatch.setenv("HF_HUB_CACHE", str(api_test_cache(tmp_path / "hf-cache")))
    box = Box.open(Settings(data_dir=tmp_path / "data", gpus="none", cpu_slots=1, hf_endpoint=endpoint))
    return box


PROMPTS = ["Write the letter a:", "Say aaa:", "Type some a's:", "a a a:"]
A_RATIO = "def reward(completions, **kwargs):\n    return [c.count('a') / max(len(c), 1) for c in completions]\n"
TINY = {
    "lora_rank": 8,
    "max_steps": 2,
    "rollouts_per_prompt": 4,
    "global_batch_size": 8,
    "max_response_length": 8,
    "max_prompt_length": 64,
    "learning_rate": 1e-3,
    "save_steps": 100,
}


def tiny_job(api: Api, hf_push: dict | None) -> str:
    dataset = api.dataset([{"prompt": p} for p in PROMPTS])
    rf = api.reward_function(A_RATIO, name="a_ratio")
    body = {"base_model": "veri-box/tiny-lm", "dataset_id": dataset, "reward_function_id": rf, "hyperparameters": TINY}
    if hf_push:
        body["hf_push"] = hf_push
    return api.job(**body)["id"]


def events(api: Api, job_id: str) -> list[dict]:
    return api.get(f"/v1/training_jobs/{job_id}/events?limit=100").json()["items"]


def push_ended(api: Api, job_id: str, timeout: float = 120) -> dict:
    run_until(
        api,
        lambda: (api.store.get_job(job_id)["hf_push_state"] or {}).get("status") in ("completed", "failed"),
        timeout,
    )
    return api.get(f"/v1/training_jobs/{job_id}").json()


@pytest.fixture
def live(tmp_path, monkeypatch, hub):
    """The in-process app with its runner ticked by the test, real trainers, the stand-in Hub."""
    box = _box(tmp_path, monkeypatch, hub.url)
    with TestClient(create_app(box, run_jobs=False)) as client:
        _, key = box.store.create_api_key("t")
        api = Api(client, key, box)
        yield api
        for job in api.store.jobs_with_status("queued", "provisioning", "running"):
            box.runner.cancel(job["id"])
        run_until(api, lambda: not api.store.jobs_holding_devices(), timeout=30)


def test_a_completed_lora_job_is_pushed_and_loads_from_what_the_hub_received(live, hub, tmp_path):
    connect(live)
    job_id = tiny_job(live, {"repo": "alice/tiny-grpo", "artifact": "adapter"})
    job = finished(live, job_id)
    assert job["status"] == "completed", (job["error"], live.get(f"/v1/training_jobs/{job_id}/logs/full").text[-2000:])
    job = push_ended(live, job_id)
    assert job["status"] == "completed"  # the push is the job's epilogue, never its status
    push = job["hf_push"]
    assert push["status"] == "completed", push
    assert push["repo_url"] == f"{hub.url}/alice/tiny-grpo" == job["hf_repo_url"]
    kinds = [e["event_type"] for e in events(live, job_id)]
    assert kinds.index("completed") < kinds.index("hf_push_started") < kinds.index("hf_push_completed")
    done = next(e for e in events(live, job_id) if e["event_type"] == "hf_push_completed")["metadata"]
    assert done["repo_url"] == push["repo_url"] and done["commit"] == push["commit"]
    assert done["commit_url"] == f"{hub.url}/alice/tiny-grpo/commit/{push['commit']}"

    # What the Hub received: a private repo with the output folder's files, the weights by LFS.
    repo = hub.repos["alice/tiny-grpo"]
    output = live.settings.data_dir / "jobs" / job_id / "output"
    sent = {p.relative_to(output).as_posix() for p in output.rglob("*") if p.is_file()}
    assert set(repo.files) == sent
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json"} <= set(repo.files)
    assert repo.private is True
    assert "adapter_model.safetensors" in repo.lfs_paths and "adapter_config.json" not in repo.lfs_paths
    assert (output / "adapter_model.safetensors").read_bytes() == repo.files["adapter_model.safetensors"]
    assert {"preupload", "lfs_batch", "lfs_upload", "lfs_verify", "commit"} <= set(hub.routes_called())
    card = repo.files["README.md"].decode()  # the model card the trainer wrote, pushed as it is
    assert card == (output / "README.md").read_text() and "veri-box/tiny-lm" in card

    # A user's copy of the repo, off the box's paths, loads with PEFT onto the base model.
    copy = Path(shutil.copytree(hub.repo_dir("alice/tiny-grpo"), tmp_path / "elsewhere" / "tiny-grpo"))
    config = json.loads((copy / "adapter_config.json").read_text())
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(live.settings.data_dir / "models" / "tiny-lm")
    model = PeftModel.from_pretrained(base, copy)
    tokenizer = AutoTokenizer.from_pretrained(copy)
    out = model.generate(**tokenizer("Say aaa:", return_tensors="pt"), max_new_tokens=4, do_sample=False)
    assert out.shape[1] > len(tokenizer("Say aaa:")["input_ids"])
    # The adapter names its base as the job did, not a path on this box.
    assert config["base_model_name_or_path"] == "veri-box/tiny-lm"
    assert str(live.settings.data_dir) not in (copy / "adapter_config.json").read_text()

    # Pushed again later to another repo (the job's push now names that one).
    r = live.post(f"/v1/training_jobs/{job_id}/push", json={"repo": "veri-lab/tiny-grpo", "artifact": "adapter"})
    assert r.status_code == 200 and r.json()["status"] == "pushing", r.text
    again = push_ended(live, job_id)["hf_push"]
    assert (again["status"], again["repo"]) == ("completed", "veri-lab/tiny-grpo")
    assert set(hub.repos["veri-lab/tiny-grpo"].files) == sent

    # artifact "merged": the base with the LoRA merged in (merged first), loadable without PEFT.
    r = live.post(f"/v1/training_jobs/{job_id}/push", json={"repo": "alice/tiny-merged", "artifact": "merged"})
    assert r.status_code == 200, r.text
    merged = push_ended(live, job_id, timeout=300)["hf_push"]
    assert (merged["status"], merged["artifact"]) == ("completed", "merged"), merged
    received = hub.repos["alice/tiny-merged"]
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= set(received.files)
    assert "model.safetensors" in received.lfs_paths and not any(p.startswith("adapter_") for p in received.files)
    kinds = [e["event_type"] for e in events(live, job_id)]
    assert "merge_completed" in kinds and kinds[-1] == "hf_push_completed"
    whole = AutoModelForCausalLM.from_pretrained(
        shutil.copytree(hub.repo_dir("alice/tiny-merged"), tmp_path / "elsewhere" / "tiny-merged")
    )
    assert whole.generate(**tokenizer("Say aaa:", return_tensors="pt"), max_new_tokens=4).shape[1] > 3


def test_a_failed_push_is_recorded_and_the_job_stays_completed(live, hub):
    connect(live)
    hub.fail["commit"] = (500, "The Hub is having a bad day")
    job_id = tiny_job(live, {"repo": "alice/tiny-grpo", "artifact": "adapter", "private": False})
    assert finished(live, job_id)["status"] == "completed"
    job = push_ended(live, job_id)
    assert job["status"] == "completed" and job["error"] is None
    assert job["hf_push"]["status"] == "failed" and job["hf_repo_url"] is None
    failed = next(e for e in events(live, job_id) if e["event_type"] == "hf_push_failed")["metadata"]
    assert "500" in failed["reason"] and failed["repo"] == "alice/tiny-grpo"
    assert job["hf_push"]["error"] == failed["reason"] and GOOD not in failed["reason"]
    assert not hub.repos["alice/tiny-grpo"].files and hub.repos["alice/tiny-grpo"].private is False

    # The job page shows the failure and offers "Push to Hub".
    from test_dashboard import Browser

    web = Browser(live)
    page = web.get(f"/jobs/{job_id}").text
    assert 'data-hf-push="failed"' in page and "The Hub is having a bad day" in page
    assert 'id="hf-push-button"' in page and 'value="alice/tiny-grpo"' in page

    # A namespace the token may not write to is refused before the push starts; one it lost the
    # rights to since the token was set (alice left veri-lab) fails the push with the Hub's 403, named.
    del hub.fail["commit"]
    r = live.post(f"/v1/training_jobs/{job_id}/push", json={"repo": "someone-else/m", "artifact": "adapter"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "hf_namespace_forbidden"
    hub.orgs["alice"] = {o: role for o, role in ALICE_ORGS.items() if o != "veri-lab"}
    r = live.post(f"/v1/training_jobs/{job_id}/push", json={"repo": "veri-lab/m", "artifact": "adapter"})
    assert r.status_code == 200
    job = push_ended(live, job_id)
    assert job["hf_push"]["status"] == "failed" and "veri-lab" in job["hf_push"]["error"]
    assert "403" in job["hf_push"]["error"]

    # The dashboard's form: a malformed repo is the API's 400 in the panel; a good one pushes.
    bad = web.post(f"/jobs/{job_id}/push", data={"repo": "no-namespace", "artifact": "adapter", "private": "true"})
    assert 'data-code="invalid_value"' in bad.text and "namespace/name" in bad.text
    r = web.post(f"/jobs/{job_id}/push", data={"repo": "alice/tiny-grpo", "artifact": "adapter", "private": "true"})
    assert r.status_code == 200 and 'data-hf-push="pushing"' in r.text, r.text
    assert push_ended(live, job_id)["hf_push"]["status"] == "completed"
    panel = web.get(f"/jobs/{job_id}/hf_push").text
    assert 'data-hf-push="completed"' in panel and f'href="{hub.url}/alice/tiny-grpo"' in panel
    assert "adapter_model.safetensors" in hub.repos["alice/tiny-grpo"].files
    assert hub.repos["alice/tiny-grpo"].private is False  # a repo keeps the visibility it was created with


# -- the official client against a real `veri-box serve` ---------------------------------------------


def test_the_official_client_sets_the_token_and_a_job_pushes_from_a_real_server(tmp_path, hub):
    """veri-sdk 0.2.45's integrations.set/get/delete_huggingface and `veri hf`, and hf_push on
    create, against `veri-box serve --hf-endpoint <stand-in>`: a full fine-tune (the test trainer's
    model folder) pushed as artifact "merged", its repo URL in the SDK's hf_repo_url."""
    from serving import FAKE_TRAINERS, KEY, Server, veri
    from veri_sdk import Client

    server = Server(
        tmp_path / "data",
        tmp_path / "serve.log",
        "--gpus",
        "none",
        "--trainers",
        FAKE_TRAINERS,
        "--hf-endpoint",
        hub.url,
    )
    key = KEY.search(server.start()).group(0)
    try:
        server.key = key
        refused = veri(server, tmp_path, "hf", "set", "--token", BAD)
        assert refused.returncode != 0 and "hf_token_invalid" in refused.stdout + refused.stderr
        done = veri(server, tmp_path, "hf", "set", "--token", GOOD)
        assert done.returncode == 0 and "alice" in done.stdout, done.stdout + done.stderr
        status = veri(server, tmp_path, "hf", "status")
        assert "alice" in status.stdout and GOOD not in status.stdout

        client = Client(api_key=key, base_url=server.url)
        assert client.integrations.get_huggingface()["username"] == "alice"
        dataset = client.datasets.upload(str(_jsonl(tmp_path)), name="d")
        job = client.training_jobs.create(
            "fake:steps=2",
            dataset.id,
            "pushed",
            gpu_type="cpu",
            gpu_count=1,
            reward_source="def reward(completions, **kwargs):\n    return [1.0 for _ in completions]\n",
            hf_push={"repo": "alice/fake-full", "artifact": "merged"},
        )
        assert job.hf_repo_url is None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and client.training_jobs.get(job.id).status != "failed":
            if client.training_jobs.get(job.id).hf_repo_url is not None:
                break
            time.sleep(0.3)
        pushed = client.training_jobs.get(job.id)
        assert pushed.status == "completed", pushed.error
        assert pushed.hf_repo_url == f"{hub.url}/alice/fake-full"
        assert set(hub.repos["alice/fake-full"].files) == {"config.json", "model.bin"}
        assert "model.bin" in hub.repos["alice/fake-full"].lfs_paths  # binary content: the LFS path

        assert client.integrations.delete_huggingface()["configured"] is False
        assert client.integrations.get_huggingface() == {**client.integrations.get_huggingface(), "configured": False}
    finally:
        server.stop()
    assert GOOD not in server.output()


def _jsonl(tmp_path: Path) -> Path:
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "hi"}\n')
    return path

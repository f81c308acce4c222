"""A box a lab shares, through a real `veri-box serve`: admin and member keys on every write
route (a table that fails when a route forgets its rule, or a new route is not in it), owners,
quotas on the cpu pool, the audit trail, and a dashboard that hides what a member may not do
while the server still refuses it."""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from serving import FAKE_TRAINERS, KEY, Server, run_cli
from test_remote_jobs import clouds, start_box  # noqa: F401  (fixtures: the provider stand-ins)

from veri_box.app import create_app
from veri_box.auth import OWNED, RULES, UNSAFE_METHODS
from veri_box.settings import Settings

# Every write route of the box and the rule it must declare. A new write route fails
# test_every_write_route_declares_its_rule until it is added here, with the rule it should have.
WRITE_ROUTES = {
    ("POST", "/v1/api_keys"): "admin",
    ("DELETE", "/v1/api_keys/{key_id}"): "admin",
    ("PATCH", "/v1/api_keys/{key_id}"): "admin",
    ("POST", "/v1/api_keys/{key_id}/reassign"): "admin",
    ("PUT", "/v1/api_keys/{key_id}/quotas"): "admin",
    ("PUT", "/v1/settings/quotas"): "admin",
    ("PUT", "/v1/settings/integrations/openreward"): "admin",
    ("DELETE", "/v1/settings/integrations/openreward"): "admin",
    ("PUT", "/v1/settings/integrations/huggingface"): "admin",
    ("DELETE", "/v1/settings/integrations/huggingface"): "admin",
    ("PUT", "/v1/settings/integrations/wandb"): "admin",
    ("DELETE", "/v1/settings/integrations/wandb"): "admin",
    ("PUT", "/v1/settings/providers/{name}"): "admin",
    ("DELETE", "/v1/settings/providers/{name}"): "admin",
    ("POST", "/v1/datasets"): "member",
    ("DELETE", "/v1/datasets/{dataset_id}"): "owner",
    ("POST", "/v1/reward_functions"): "member",
    ("DELETE", "/v1/reward_functions/{rf_id}"): "owner",
    ("POST", "/v1/reward_functions/test"): "member",
    ("POST", "/v1/reward_functions/{rf_id}/test"): "member",
    ("POST", "/v1/training_jobs"): "member",
    ("PATCH", "/v1/training_jobs/{job_id}"): "owner",
    ("DELETE", "/v1/training_jobs/{job_id}"): "owner",
    ("POST", "/v1/training_jobs/{job_id}/cancel"): "owner",
    ("POST", "/v1/training_jobs/{job_id}/heartbeat"): "owner",
    ("POST", "/v1/training_jobs/{job_id}/merge"): "owner",
    ("POST", "/v1/training_jobs/{job_id}/evaluate"): "owner",
    ("POST", "/v1/training_jobs/{job_id}/push"): "owner",
    ("POST", "/v1/deployments"): "member",
    ("POST", "/v1/deployments/{deployment_id}/stop"): "owner",
    ("DELETE", "/v1/deployments/{deployment_id}"): "owner",
    ("POST", "/v1/deployments/{deployment_id}/chat/completions"): "member",
    # the dashboard's form posts
    ("POST", "/login"): "public",
    ("POST", "/logout"): "member",
    ("POST", "/jobs/new"): "member",
    ("POST", "/demo"): "member",
    ("POST", "/jobs/{job_id}/cancel"): "owner",
    ("POST", "/jobs/{job_id}/delete"): "owner",
    ("POST", "/jobs/{job_id}/merge"): "owner",
    ("POST", "/jobs/{job_id}/evaluate"): "owner",
    ("POST", "/playground/deploy"): "member",
    ("POST", "/playground/{deployment_id}/chat"): "member",
    ("POST", "/jobs/{job_id}/push"): "owner",
    ("POST", "/jobs/{job_id}/labels"): "owner",
    ("POST", "/datasets"): "member",
    ("POST", "/datasets/{dataset_id}/delete"): "owner",
    ("POST", "/reward-functions"): "member",
    ("POST", "/reward-functions/{rf_id}/delete"): "owner",
    ("POST", "/reward-functions/test"): "member",
    ("POST", "/settings/api-keys"): "admin",
    ("POST", "/settings/api-keys/{key_id}/revoke"): "admin",
    ("POST", "/settings/api-keys/{key_id}/quotas"): "admin",
    ("POST", "/settings/quotas"): "admin",
    ("POST", "/settings/openreward"): "admin",
    ("POST", "/settings/openreward/delete"): "admin",
    ("POST", "/settings/wandb"): "admin",
    ("POST", "/settings/wandb/delete"): "admin",
    ("POST", "/settings/huggingface"): "admin",
    ("POST", "/settings/huggingface/delete"): "admin",
    ("POST", "/settings/providers/{name}"): "admin",
    ("POST", "/settings/providers/{name}/delete"): "admin",
}
# Called for real only with a rule that refuses members; these member routes act at once
# (end the session, start the demo), so the live table test leaves them to the rule check.
NOT_CALLED = {("POST", "/logout"), ("POST", "/demo"), ("POST", "/login")}
# A deployment is a model server the test would have to start; its routes are held to their rule
# above and the guard's owner check is the one every owned kind shares.
NOT_CALLED |= {
    ("POST", "/v1/deployments/{deployment_id}/stop"),
    ("DELETE", "/v1/deployments/{deployment_id}"),
    ("POST", "/v1/deployments/{deployment_id}/chat/completions"),
    ("POST", "/playground/{deployment_id}/chat"),
}
ROWS = b'{"prompt": "What is 2+2?", "answer": "4"}\n'
REWARD = b"def reward(completions, **kwargs):\n    return [float('4' in c) for c in completions]\n"


def app_write_routes(tmp_path: Path) -> dict[tuple[str, str], dict]:
    app = create_app(Settings(data_dir=tmp_path / "data", gpus="none"), run_jobs=False)
    found = {}
    for route in app.routes:
        for handler in getattr(route, "route_handlers", []):
            for method in handler.http_methods:
                if method in UNSAFE_METHODS:
                    guards = [getattr(getattr(g, "func", g), "__name__", "") for g in handler.resolve_guards()]
                    found[(method, route.path_format)] = {**handler.opt, "_enforced": "enforce_rule" in guards}
    return found


def test_every_write_route_declares_its_rule(tmp_path: Path):
    routes = app_write_routes(tmp_path)
    missing = sorted(f"{m} {p}" for (m, p), opt in routes.items() if opt.get("rule") not in RULES)
    assert not missing, (
        'write routes without opt={"rule": ...} (refused for every key until they have one; see veri_box/auth.py): '
        f"{missing}"
    )
    for (method, path), opt in routes.items():
        if opt["rule"] == "owner":
            assert opt.get("owns") in OWNED, f"{method} {path}: an owner rule names what it owns ({list(OWNED)})"
            assert "{" + OWNED[opt["owns"]][1] + "}" in path, f"{method} {path} lacks {{{OWNED[opt['owns']][1]}}}"
    unguarded = sorted(f"{m} {p}" for (m, p), opt in routes.items() if not opt["_enforced"])
    assert not unguarded, (
        f"write routes outside a router with veri_box.auth.rule_guard (their rule is not enforced): {unguarded}"
    )
    declared = {k: opt["rule"] for k, opt in routes.items()}
    new = sorted(f"{m} {p}: {r}" for (m, p), r in declared.items() if (m, p) not in WRITE_ROUTES)
    assert not new, f"new write routes: add them to WRITE_ROUTES in tests/test_sharing.py with their rule: {new}"
    gone = sorted(f"{m} {p}" for (m, p) in WRITE_ROUTES if (m, p) not in declared)
    assert not gone, f"WRITE_ROUTES names routes the box no longer has: {gone}"
    wrong = sorted(
        f"{m} {p}: {declared[(m, p)]}, expected {r}" for (m, p), r in WRITE_ROUTES.items() if declared[(m, p)] != r
    )
    assert not wrong, wrong


# ---- one real server, an admin and two members ------------------------------------------------


class Lab:
    def __init__(self, server: Server):
        self.server = server
        self.admin = self.client(server.key)
        self.admin_id = self.admin.get("/v1/me").json()["id"]
        self.keys: dict[str, dict] = {}
        for name in ("alice", "bob"):
            r = self.admin.post("/v1/api_keys", json={"name": name})
            assert r.status_code == 200 and r.json()["role"] == "member", r.text
            self.keys[name] = r.json()
        self.alice = self.client(self.keys["alice"]["key"])
        self.bob = self.client(self.keys["bob"]["key"])

    def client(self, key: str) -> httpx.Client:
        return httpx.Client(base_url=self.server.url, headers={"Authorization": f"Bearer {key}"}, timeout=30)

    def browser(self, key: str) -> tuple[httpx.Client, str]:
        """A logged-in dashboard session and its CSRF token."""
        web = httpx.Client(base_url=self.server.url, timeout=30)
        page = web.get("/login")
        token = re.search(r'name="_csrf" value="([^"]+)"', page.text).group(1)
        r = web.post("/login", data={"_csrf": token, "api_key": key, "next": "/jobs"})
        assert r.status_code in (200, 303), r.text
        csrf = re.search(r'name="_csrf" value="([^"]+)"', web.get("/jobs").text).group(1)
        return web, csrf


def dataset(http: httpx.Client) -> str:
    r = http.post("/v1/datasets", data={"name": "math"}, files={"file": ("math.jsonl", ROWS, "application/jsonl")})
    assert r.status_code == 200, r.text
    return r.json()["id"]


def reward_function(http: httpx.Client) -> str:
    r = http.post("/v1/reward_functions", data={"name": "four"}, files={"file": ("r.py", REWARD, "text/x-python")})
    assert r.status_code == 200, r.text
    return r.json()["id"]


def submit(http: httpx.Client, base_model: str = "fake:hang=1", count: int = 1) -> httpx.Response:
    return http.post(
        "/v1/training_jobs",
        json={
            "base_model": base_model,
            "dataset_id": dataset(http),
            "reward_function_id": reward_function(http),
            "output_name": "shared",
            "gpu": {"type": "cpu", "count": count},
        },
    )


def job(http: httpx.Client, base_model: str = "fake:hang=1") -> dict:
    r = submit(http, base_model)
    assert r.status_code == 200, r.text
    return r.json()


def status(http: httpx.Client, job_id: str) -> str:
    return http.get(f"/v1/training_jobs/{job_id}").json()["status"]


def wait_until(predicate, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def forbidden(r: httpx.Response) -> None:
    assert r.status_code == 403, r.text
    assert r.json()["error"]["code"] == "forbidden" and r.json()["error"]["message"], r.text


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    base = tmp_path_factory.mktemp("sharing")
    server = Server(
        base / "data", base / "serve.log", "--gpus", "none", "--cpu-slots", "2", "--trainers", FAKE_TRAINERS
    )
    try:
        startup = server.start()
        server.key = KEY.findall(startup)[0]
        lab = Lab(server)
        yield lab
    finally:
        server.stop()


@pytest.fixture
def clean(lab: Lab) -> Iterator[Lab]:
    """Quotas cleared and every unfinished job cancelled after the test, so the cpu slots are free."""
    yield lab
    for name in ("alice", "bob"):
        lab.admin.put(f"/v1/api_keys/{lab.keys[name]['id']}/quotas", json={})
    lab.admin.put("/v1/settings/quotas", json={})
    for s in ("queued", "provisioning", "running"):
        for j in lab.admin.get(f"/v1/training_jobs?status={s}&limit=100").json()["data"]:
            lab.admin.post(f"/v1/training_jobs/{j['id']}/cancel")
    assert wait_until(lambda: cpu_free(lab.admin) == 2), lab.server.output()[-3000:]


def cpu_free(http: httpx.Client) -> int:
    rows = http.get("/v1/gpu/availability").json()["availability"]
    return next(r for r in rows if r["gpu_type"] == "cpu")["available"]


def fill(path: str, ids: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: ids.get(m.group(1), "nope"), path)


def test_a_member_is_refused_every_admin_and_others_owner_route_and_an_admin_is_not(clean: Lab):
    lab = clean
    admins = {
        "job_id": job(lab.admin, "fake:steps=1")["id"],
        "dataset_id": dataset(lab.admin),
        "rf_id": reward_function(lab.admin),
        "key_id": lab.admin_id,
        "name": "runpod",
    }
    member_web, member_csrf = lab.browser(lab.keys["alice"]["key"])
    admin_web, admin_csrf = lab.browser(lab.server.key)
    checked = 0
    for (method, path), rule in WRITE_ROUTES.items():
        if (method, path) in NOT_CALLED:
            continue
        dashboard = not path.startswith("/v1/")

        def call(who: str, ids: dict[str, str]) -> httpx.Response:
            url = fill(path, ids)
            if dashboard:
                web, csrf = (member_web, member_csrf) if who == "member" else (admin_web, admin_csrf)
                return web.request(method, url, data={"_csrf": csrf}, headers={"X-CSRF-Token": csrf})
            http = lab.alice if who == "member" else lab.admin
            return http.request(method, url, json={})

        r = call("member", admins)
        label = f"{method} {path} ({rule}) as a member"
        if rule in ("admin", "owner"):
            assert r.status_code == 403, f"{label}: {r.status_code} {r.text[:300]}"
            if not dashboard:
                assert r.json()["error"]["code"] == "forbidden", label
            else:
                assert "forbidden" in r.text, label
            # an admin passes the rule (on objects that do not exist: the handler answers for them)
            r = call("admin", {})
            assert r.status_code != 403, f"{method} {path} as an admin: {r.status_code} {r.text[:300]}"
        else:
            assert r.status_code != 403, f"{label}: {r.text[:300]}"
        checked += 1
    assert checked == len(WRITE_ROUTES) - len(NOT_CALLED)
    # nothing of the admin's was touched by the refused calls
    assert lab.admin.get(f"/v1/datasets/{admins['dataset_id']}").status_code == 200
    assert lab.admin.get(f"/v1/training_jobs/{admins['job_id']}").status_code == 200
    assert lab.admin.get("/v1/me").status_code == 200


def test_a_member_cannot_revoke_an_admin_change_settings_or_touch_another_members_job(clean: Lab):
    lab = clean
    theirs = job(lab.bob)
    assert theirs["created_by"] == {"id": lab.keys["bob"]["id"], "name": "bob"}
    # reads are open to the lab
    assert lab.alice.get(f"/v1/training_jobs/{theirs['id']}").json()["created_by"]["name"] == "bob"
    forbidden(lab.alice.post(f"/v1/training_jobs/{theirs['id']}/cancel"))
    forbidden(lab.alice.delete(f"/v1/training_jobs/{theirs['id']}"))
    forbidden(lab.alice.delete(f"/v1/api_keys/{lab.admin_id}"))
    forbidden(lab.alice.delete(f"/v1/api_keys/{lab.keys['bob']['id']}"))
    forbidden(lab.alice.put("/v1/settings/providers/runpod", json={"api_key": "x"}))
    forbidden(lab.alice.put("/v1/settings/integrations/openreward", json={"api_key": "x"}))
    forbidden(lab.alice.post("/v1/api_keys", json={"name": "more"}))
    message = lab.alice.post(f"/v1/training_jobs/{theirs['id']}/cancel").json()["error"]["message"]
    assert "bob" in message and "alice" in message
    assert status(lab.bob, theirs["id"]) != "cancelled"
    assert lab.admin.get(f"/v1/api_keys/{lab.admin_id}/quotas").status_code == 200
    # the owner may, and so may an admin
    mine = job(lab.alice)
    assert lab.alice.post(f"/v1/training_jobs/{mine['id']}/cancel").json()["status"] == "cancelled"
    assert lab.admin.post(f"/v1/training_jobs/{theirs['id']}/cancel").json()["status"] == "cancelled"
    # mine=true lists only this key's jobs
    listed = lab.alice.get("/v1/training_jobs?mine=true&limit=100").json()["data"]
    assert listed and {j["created_by"]["id"] for j in listed} == {lab.keys["alice"]["id"]}
    # the last admin cannot go; /v1/me answers each key's role
    r = lab.admin.delete(f"/v1/api_keys/{lab.admin_id}")
    assert r.status_code == 409 and r.json()["error"]["code"] == "last_admin", r.text
    assert lab.alice.get("/v1/me").json()["role"] == "member"
    assert lab.admin.get("/v1/me").json()["role"] == "admin"
    r = lab.admin.patch(f"/v1/api_keys/{lab.admin_id}", json={"role": "member"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "last_admin", r.text
    # a member made an admin may then do what admins do, and back
    forbidden(lab.alice.patch(f"/v1/api_keys/{lab.keys['alice']['id']}", json={"role": "admin"}))
    r = lab.admin.patch(f"/v1/api_keys/{lab.keys['alice']['id']}", json={"role": "admin"})
    assert r.status_code == 200 and r.json()["role"] == "admin", r.text
    assert lab.alice.get("/v1/settings/quotas").status_code == 200
    assert lab.alice.put("/v1/settings/quotas", json={}).status_code == 200
    assert (
        lab.admin.patch(f"/v1/api_keys/{lab.keys['alice']['id']}", json={"role": "member"}).json()["role"] == "member"
    )
    forbidden(lab.alice.put("/v1/settings/quotas", json={}))


def test_a_revoked_keys_objects_keep_its_name_and_an_admin_reassigns_them(clean: Lab):
    lab = clean
    r = lab.admin.post("/v1/api_keys", json={"name": "student"})
    student = r.json()
    http = lab.client(student["key"])
    ds = dataset(http)
    assert lab.admin.delete(f"/v1/api_keys/{student['id']}").status_code == 200
    assert lab.admin.get(f"/v1/datasets/{ds}").json()["created_by"] == {"id": student["id"], "name": "student"}
    forbidden(lab.alice.post(f"/v1/api_keys/{student['id']}/reassign", json={"to": lab.keys["alice"]["id"]}))
    r = lab.admin.post(f"/v1/api_keys/{student['id']}/reassign", json={"to": lab.keys["alice"]["id"]})
    assert r.status_code == 200, r.text
    assert r.json()["datasets"] == 1 and r.json()["to"] == lab.keys["alice"]["id"]
    assert lab.alice.get(f"/v1/datasets/{ds}").json()["created_by"]["name"] == "alice"
    assert lab.alice.delete(f"/v1/datasets/{ds}").status_code == 200
    r = lab.admin.post(f"/v1/api_keys/{student['id']}/reassign", json={"to": student["id"]})
    assert r.status_code == 404 and r.json()["error"]["param"] == "to"


def test_concurrency_quotas_make_jobs_wait_on_the_cpu_pool_and_too_big_a_job_is_refused(clean: Lab):
    lab = clean
    alice_id = lab.keys["alice"]["id"]
    forbidden(lab.alice.put(f"/v1/api_keys/{alice_id}/quotas", json={"max_running_jobs": 5}))
    r = lab.admin.put(f"/v1/api_keys/{alice_id}/quotas", json={"max_running_jobs": 1, "max_gpus": 1})
    assert r.status_code == 200 and r.json()["effective"]["max_running_jobs"] == 1, r.text
    first = job(lab.alice)
    assert wait_until(lambda: status(lab.alice, first["id"]) == "running")
    second = job(lab.alice)
    third = job(lab.bob)  # submitted after alice's second, runs before it on the free slot
    assert wait_until(lambda: status(lab.bob, third["id"]) == "running")
    assert status(lab.alice, second["id"]) == "queued"
    events = lab.alice.get(f"/v1/training_jobs/{second['id']}/events").json()["items"]
    waiting = [e for e in events if e["event_type"] == "waiting_for_quota"]
    assert len(waiting) == 1 and waiting[0]["metadata"]["limit"] == "max_running_jobs", events
    me = lab.alice.get("/v1/me").json()
    assert me["quotas"]["max_running_jobs"] == 1 and me["usage"]["running_jobs"] == 1 and me["usage"]["gpus"] == 1
    # two slots at once is more than alice may ever hold: refused at submit, naming the limit
    r = submit(lab.alice, count=2)
    assert r.status_code == 429, r.text
    error = r.json()["error"]
    assert error["code"] == "quota_exceeded" and error["param"] == "max_gpus" and "1" in error["message"]
    # the slot alice holds frees: her waiting job starts
    lab.alice.post(f"/v1/training_jobs/{first['id']}/cancel")
    assert wait_until(lambda: status(lab.alice, second["id"]) == "running"), lab.server.output()[-3000:]
    # the lab default applies to a key without its own limits
    forbidden(lab.bob.put("/v1/settings/quotas", json={"default": {"max_running_jobs": 9}}))
    r = lab.admin.put("/v1/settings/quotas", json={"default": {"max_running_jobs": 0}, "monthly_budget_usd": 50})
    assert r.status_code == 200 and r.json()["monthly_budget_usd"] == 50, r.text
    r = submit(lab.bob)
    assert r.status_code == 429 and r.json()["error"]["param"] == "max_running_jobs", r.text
    assert lab.bob.get("/v1/me").json()["quotas"]["max_running_jobs"] == 0


def test_writes_are_audited_with_who_what_and_where_and_reads_are_not(clean: Lab):
    lab = clean
    alice_id = lab.keys["alice"]["id"]

    def alices() -> list[dict]:
        r = lab.admin.get(f"/v1/audit?api_key={alice_id}&limit=100")
        assert r.status_code == 200, r.text
        return r.json()["data"]

    before = len(alices())
    for url in ("/v1/training_jobs", "/v1/datasets", "/v1/me", "/v1/reward_functions", "/v1/settings/quotas"):
        assert lab.alice.get(url).status_code == 200
    assert len(alices()) == before, "reads were audited"
    ds = dataset(lab.alice)
    forbidden(lab.alice.put("/v1/settings/quotas", json={}))
    forbidden(lab.alice.get("/v1/audit"))
    rows = alices()
    assert len(rows) == before + 2
    refused, made = rows[0], rows[1]
    assert made["action"] == "POST /v1/datasets" and made["object_id"] == ds and made["object_type"] == "dataset"
    assert (
        made["status"] == 200 and made["client"] == "127.0.0.1" and made["api_key"] == {"id": alice_id, "name": "alice"}
    )
    assert refused["action"] == "PUT /v1/settings/quotas" and refused["status"] == 403
    # filters and pages
    by_object = lab.admin.get(f"/v1/audit?object_id={ds}").json()["data"]
    assert [r["id"] for r in by_object] == [made["id"]]
    dataset(lab.admin)  # a second upload, so that there is a second page
    page = lab.admin.get("/v1/audit?limit=1&action=datasets").json()
    assert page["has_more"] is True and len(page["data"]) == 1
    older = lab.admin.get(f"/v1/audit?limit=1&action=datasets&after={page['data'][0]['id']}").json()["data"]
    assert older and older[0]["id"] != page["data"][0]["id"]
    # the dashboard's writes land in the same trail, and its page is the admins'
    web, csrf = lab.browser(lab.keys["alice"]["key"])
    r = web.post(f"/datasets/{ds}/delete", data={"_csrf": csrf})
    assert r.status_code == 200, r.text
    assert alices()[0]["action"] == "POST /datasets/{dataset_id}/delete" and alices()[0]["object_id"] == ds
    assert web.get("/audit").status_code == 403
    admin_web, _ = lab.browser(lab.server.key)
    page = admin_web.get(f"/audit?api_key={alice_id}")
    assert page.status_code == 200 and "POST /datasets/{dataset_id}/delete" in page.text


def test_dashboard_logins_are_audited_refused_ones_too_and_never_with_the_key(clean: Lab):
    lab = clean
    alice = lab.keys["alice"]
    typo = alice["key"][:-4] + "0000"
    web = httpx.Client(base_url=lab.server.url, timeout=30)
    token = re.search(r'name="_csrf" value="([^"]+)"', web.get("/login").text).group(1)
    refused = web.post("/login", data={"_csrf": token, "api_key": typo, "next": "/jobs"})
    assert refused.status_code == 401 and "not valid or has been revoked" in refused.text
    expired = web.post("/login", data={"_csrf": "forged", "api_key": alice["key"]})
    assert expired.status_code == 403 and "expired" in expired.text
    lab.browser(alice["key"])
    page = lab.admin.get("/v1/audit?action=POST%20/login&limit=10")
    assert page.status_code == 200, page.text
    ok, forged, wrong = page.json()["data"][:3]
    assert ok["status"] == 303 and ok["api_key"] == {"id": alice["id"], "name": "alice"}
    assert (ok["object_type"], ok["object_id"]) == ("api_key", alice["id"])
    assert forged["status"] == 403 and forged["api_key"] is None
    assert wrong["status"] == 401 and wrong["api_key"] is None and wrong["object_id"] is None
    assert wrong["client"] == "127.0.0.1"  # where someone tries keys from
    assert typo not in page.text and alice["key"] not in page.text
    assert typo not in lab.server.output() and alice["key"] not in lab.server.output()
    admin_web, _ = lab.browser(lab.server.key)
    listed = admin_web.get("/audit?action=/login").text
    assert "POST /login" in listed and "<strong>401</strong>" in listed and typo not in listed


def test_the_dashboard_hides_what_a_member_may_not_do_and_the_server_still_refuses_it(clean: Lab):
    lab = clean
    web, csrf = lab.browser(lab.keys["alice"]["key"])
    page = web.get("/settings").text
    assert 'id="create-key"' not in page and "/revoke" not in page
    assert 'id="providers"' not in page and 'id="integration"' not in page and 'id="member-note"' in page
    assert 'href="/audit"' not in page and "member" in page
    admin_web, admin_csrf = lab.browser(lab.server.key)
    admin_page = admin_web.get("/settings").text
    assert 'id="create-key"' in admin_page and 'id="providers"' in admin_page and 'href="/audit"' in admin_page
    keys = len(lab.admin.get("/v1/api_keys?limit=100").json()["data"])
    r = web.post("/settings/api-keys", data={"_csrf": csrf, "name": "sneaky", "role": "admin"})
    assert r.status_code == 403 and "forbidden" in r.text
    r = web.post(f"/settings/api-keys/{lab.admin_id}/revoke", data={"_csrf": csrf})
    assert r.status_code == 403
    assert len(lab.admin.get("/v1/api_keys?limit=100").json()["data"]) == keys
    # jobs name their owner; "Mine only" lists this key's; Cancel shows only to the owner (and admins)
    hers, theirs = job(lab.alice), job(lab.bob)
    listed = web.get("/jobs?mine=1").text
    assert hers["id"] in listed and theirs["id"] not in listed and "by alice" in listed
    assert theirs["id"] in web.get("/jobs").text
    other = web.get(f"/jobs/{theirs['id']}").text
    assert 'id="created-by"' in other and "bob" in other and 'id="cancel-job"' not in other
    assert f'hx-post="/jobs/{theirs["id"]}/labels"' not in other
    assert f'hx-post="/jobs/{hers["id"]}/labels"' in web.get(f"/jobs/{hers['id']}").text
    assert 'id="cancel-job"' in web.get(f"/jobs/{hers['id']}").text
    assert 'id="cancel-job"' in admin_web.get(f"/jobs/{theirs['id']}").text
    r = web.post(f"/jobs/{theirs['id']}/cancel", data={"_csrf": csrf})
    assert r.status_code == 403 and status(lab.bob, theirs["id"]) != "cancelled"
    # quotas: a member sees its own; an admin sets the lab's and each key's there
    assert 'id="my-quotas"' in page and 'id="lab-quotas"' not in page
    r = web.post("/settings/quotas", data={"_csrf": csrf, "max_running_jobs": "9"})
    assert r.status_code == 403
    r = admin_web.post("/settings/quotas", data={"_csrf": admin_csrf, "max_gpus": "3", "monthly_budget_usd": "25"})
    assert r.status_code == 200 and "Lab quotas saved." in r.text, r.text[-800:]
    assert lab.admin.get("/v1/settings/quotas").json()["default"]["max_gpus"] == 3
    bob = lab.keys["bob"]["id"]
    r = admin_web.post(f"/settings/api-keys/{bob}/quotas", data={"_csrf": admin_csrf, "max_running_jobs": "lots"})
    assert 'data-code="invalid_value"' in r.text
    r = admin_web.post(f"/settings/api-keys/{bob}/quotas", data={"_csrf": admin_csrf, "max_running_jobs": "2"})
    assert lab.bob.get("/v1/me").json()["quotas"] == {"max_running_jobs": 2, "max_gpus": 3, "monthly_spend_usd": None}
    assert 'id="lab-quotas"' in admin_web.get("/settings").text
    # an admin's dashboard makes member keys unless told otherwise
    r = admin_web.post("/settings/api-keys", data={"_csrf": admin_csrf, "name": "ta"}, headers={"HX-Request": "true"})
    assert "a member key" in r.text, r.text[:500]


def test_keys_create_makes_members_unless_admin_and_the_first_key_of_a_new_box_is_an_admin(clean: Lab, tmp_path):
    lab = clean
    data_dir = str(lab.server.data_dir)
    member = run_cli("keys", "create", "--name", "laptop", "--data-dir", data_dir)
    admin = run_cli("keys", "create", "--name", "head", "--admin", "--data-dir", data_dir)
    assert member.returncode == 0 and admin.returncode == 0, member.stderr + admin.stderr
    roles = {k["name"]: k["role"] for k in lab.admin.get("/v1/api_keys?limit=100").json()["data"]}
    assert roles["laptop"] == "member" and roles["head"] == "admin" and roles["first key"] == "admin"
    listed = run_cli("keys", "list", "--data-dir", data_dir).stdout
    assert re.search(r"laptop\s+member", listed) and re.search(r"head\s+admin", listed)
    fresh = run_cli("keys", "create", "--name", "me", "--data-dir", str(tmp_path / "new"))
    assert fresh.returncode == 0 and "admin" in fresh.stderr, fresh.stderr


def test_keys_of_a_box_from_before_roles_become_admins(tmp_path: Path):
    """m008_sharing on a database whose migrations stop before it: every key there could do
    everything, so each becomes an admin (nobody is locked out of an upgraded box)."""
    from veri_box import store as store_mod

    db = tmp_path / "old.db"
    conn = sqlite3.connect(db, isolation_level=None)
    store_mod.migrations.apply(store_mod.Database(conn), stop_before="m008_sharing")
    conn.execute(
        "INSERT INTO api_keys (id, name, key_prefix, key_hash, created_at) VALUES ('k1', 'old', 'vk_0000', 'h', 'x')"
    )
    conn.close()
    upgraded = store_mod.Store(db)
    assert upgraded.get_api_key("k1")["role"] == "admin"
    row, _ = upgraded.create_api_key("new", "member")
    assert upgraded.get_api_key(row["id"])["role"] == "member"
    assert json.loads(json.dumps(upgraded.owned_counts("k1"))) == {
        "jobs": 0,
        "datasets": 0,
        "reward_functions": 0,
        "deployments": 0,
    }


# ---- monthly spend with the cloud provider stand-ins ----------------------------------------------


def test_a_cloud_job_is_cancelled_at_its_keys_spend_limit_and_then_refused_at_submit(start_box, clouds):  # noqa: F811
    from test_remote_jobs import FAKE_ARGS, GPU, create_job, events, instance_of

    box = start_box(*FAKE_ARGS)
    admin = box.http
    key = admin.post("/v1/api_keys", json={"name": "student"}).json()
    student = httpx.Client(base_url=box.server.url, headers={"Authorization": f"Bearer {key['key']}"}, timeout=60)
    # RunPod's stand-in rents the A100 at $1.64/h: $0.002 is reached about 4 s after the launch.
    r = admin.put(f"/v1/api_keys/{key['id']}/quotas", json={"monthly_spend_usd": 0.002})
    assert r.status_code == 200, r.text
    job_id = create_job(student, "fake:steps=100000,step_s=0.1")["id"]
    # submit warned how long it could run at the offer's price before the limit
    warned = [e for e in events(student, job_id) if e["event_type"] == "spend_warning"]
    assert len(warned) == 1 and warned[0]["metadata"]["limit"] == "monthly_spend_usd", events(student, job_id)
    assert 0 < warned[0]["metadata"]["hours_left"] < 0.01 and "cancelled" in warned[0]["metadata"]["message"]
    instance_id = instance_of(student, job_id)["instance_id"]
    job = wait_until(lambda: (j := student.get(f"/v1/training_jobs/{job_id}").json())["status"] == "cancelled" and j)
    assert job, student.get(f"/v1/training_jobs/{job_id}").json()
    reached = [e for e in events(student, job_id) if e["event_type"] == "spend_limit_reached"]
    assert len(reached) == 1 and reached[0]["metadata"]["limit"] == "monthly_spend_usd", events(student, job_id)
    assert wait_until(lambda: instance_id not in clouds.runpod.instances, timeout=60), "the instance was not terminated"
    me = student.get("/v1/me").json()
    assert me["usage"]["spend_usd"] >= 0.002
    # The next cloud job of this key is refused at submit, naming the limit, the usage and the reset.
    body = {"base_model": "fake:steps=1", "dataset_id": dataset(student), "output_name": "x", "gpu": GPU}
    r = student.post("/v1/training_jobs", json={**body, "reward_source": REWARD.decode()})
    assert r.status_code == 429, r.text
    error = r.json()["error"]
    assert error["code"] == "quota_exceeded" and error["param"] == "monthly_spend_usd"
    assert me["usage"]["resets_at"] in error["message"]
    # The box's budget: every key's cloud jobs are refused once the box has spent it.
    assert admin.put("/v1/settings/quotas", json={"monthly_budget_usd": 0.001}).status_code == 200
    r = admin.post("/v1/training_jobs", json={**body, "dataset_id": dataset(admin), "reward_source": REWARD.decode()})
    assert r.status_code == 402 and r.json()["error"]["code"] == "budget_exceeded", r.text
    # a job for the box's own cpu pool rents nothing: still accepted
    r = submit(student, "fake:steps=1")
    assert r.status_code == 200, r.text


def test_a_write_route_without_a_rule_is_refused_for_every_key_even_an_admin(tmp_path: Path):
    """Fail closed: the guard refuses a write route that declares no rule (reads pass)."""
    from litestar import Litestar, Router, get, post
    from litestar.testing import TestClient

    from veri_box.auth import api_key_guard, rule_guard
    from veri_box.errors import ApiError, exception_handler
    from veri_box.store import Store

    store = Store(tmp_path / "box.db")
    _, admin = store.create_api_key("boss", "admin")

    @post("/v1/forgotten")
    def forgotten() -> dict:
        return {"done": True}

    @get("/v1/readable")
    def readable() -> dict:
        return {"read": True}

    api = Router(path="/", guards=[api_key_guard(store), rule_guard(store)], route_handlers=[forgotten, readable])
    app = Litestar(route_handlers=[api], exception_handlers={ApiError: exception_handler})
    with TestClient(app) as client:
        headers = {"Authorization": f"Bearer {admin}"}
        r = client.post("/v1/forgotten", headers=headers)
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden", r.text
        assert "declares no access rule" in r.json()["error"]["message"]
        assert client.get("/v1/readable", headers=headers).json() == {"read": True}

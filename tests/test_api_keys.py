"""API keys: Bearer auth on every /v1 route, hashes only, revocation takes effect at once."""

import hashlib


def test_missing_and_wrong_keys_get_401_with_the_error_shape(api):
    for headers in ({}, {"Authorization": "Bearer vk_" + "0" * 40}, {"Authorization": "Basic abc"}):
        r = api.client.get("/v1/training_jobs", headers=headers)
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == "Bearer"
        error = r.json()["error"]
        assert error["type"] == "authentication_error"
        assert error["code"] in ("missing_api_key", "invalid_api_key")
        assert error["message"]


def test_create_list_revoke(api):
    r = api.post("/v1/api_keys", json={"name": "notebook"})
    assert r.status_code == 200
    created = r.json()
    assert created["object"] == "api_key" and created["name"] == "notebook"
    assert created["key"].startswith("vk_") and len(created["key"]) == 43
    assert created["key_prefix"] == created["key"][:7]
    assert created["last_used_at"] is None

    listed = api.get("/v1/api_keys").json()
    assert listed["object"] == "list" and listed["has_more"] is False
    assert {k["name"] for k in listed["data"]} == {"test", "notebook"}
    assert all("key" not in k for k in listed["data"])

    new_headers = {"Authorization": f"Bearer {created['key']}"}
    assert api.client.get("/v1/datasets", headers=new_headers).status_code == 200
    used = {k["id"]: k for k in api.get("/v1/api_keys").json()["data"]}[created["id"]]
    assert used["last_used_at"] is not None

    r = api.delete(f"/v1/api_keys/{created['id']}")
    assert r.json() == {"id": created["id"], "object": "api_key", "deleted": True}
    assert api.client.get("/v1/datasets", headers=new_headers).status_code == 401
    assert api.delete(f"/v1/api_keys/{created['id']}").status_code == 404


def test_only_hashes_are_stored(api):
    key = api.post("/v1/api_keys", json={"name": "x"}).json()["key"]
    dump = "\n".join(api.store.db.conn.iterdump())
    assert key not in dump
    assert hashlib.sha256(key.encode()).hexdigest() in dump


def test_key_name_is_validated(api):
    for body, code in (
        ({}, "missing_field"),
        ({"name": ""}, "invalid_value"),
        ({"name": "x", "extra": 1}, "unknown_field"),
    ):
        r = api.post("/v1/api_keys", json=body)
        assert r.status_code == 400
        assert r.json()["error"]["code"] == code

"""Reward functions: checked by syntax tree on upload, never imported by the server."""

from conftest import REWARD_SOURCE


def upload(api, source, filename="reward.py"):
    return api.post("/v1/reward_functions", data={"name": "r"}, files={"file": (filename, source.encode())})


def test_upload_get_source_list(api):
    r = upload(api, REWARD_SOURCE)
    assert r.status_code == 200, r.text
    rf = r.json()
    assert rf["object"] == "reward_function" and rf["id"].startswith("rf_")
    assert (rf["format"], rf["entrypoint"]) == ("trl", "reward")
    assert len(rf["sha256"]) == 64
    source = api.get(f"/v1/reward_functions/{rf['id']}/source")
    assert source.text == REWARD_SOURCE and source.headers["content-type"].startswith("text/x-python")
    assert [x["id"] for x in api.get("/v1/reward_functions").json()["data"]] == [rf["id"]]


def test_single_public_function_is_the_entrypoint(api):
    src = (
        "import re\n\ndef _helper(x):\n    return x\n\n"
        "def exact_match(completions, answer, **kwargs):\n    return [1.0]\n"
    )
    assert upload(api, src).json()["entrypoint"] == "exact_match"


def test_the_server_never_runs_the_file(api, tmp_path):
    marker = tmp_path / "ran"
    src = f"open({str(marker)!r}, 'w').write('x')\n\ndef reward(completions, **kwargs):\n    return [0.0]\n"
    assert upload(api, src).status_code == 200
    assert not marker.exists()


def test_bad_files_are_explained(api):
    cases = [
        ("def reward(completions, **kwargs)\n    return []\n", "syntax error on line 1"),
        (
            "def a(completions, **kw):\n    pass\n\ndef b(completions, **kw):\n    pass\n",
            "public functions found: a, b",
        ),
        ("x = 1\n", "public functions found: none"),
        ("def reward(completions):\n    return []\n", "must accept `completions` and `**kwargs`"),
        ("def reward(prompts, **kwargs):\n    return []\n", "must accept `completions`"),
        ("async def reward(completions, **kwargs):\n    return []\n", "is async"),
        ("", "empty"),
    ]
    for source, message in cases:
        r = upload(api, source)
        assert r.status_code == 400, source
        error = r.json()["error"]
        assert error["param"] == "file"
        assert message in error["message"], (source, error)
    assert upload(api, REWARD_SOURCE, filename="reward.txt").json()["error"]["code"] == "invalid_file_type"
    r = api.post(
        "/v1/reward_functions",
        data={"name": "r", "format": "openai"},
        files={"file": ("reward.py", REWARD_SOURCE.encode())},
    )
    assert r.json()["error"]["param"] == "format"
    assert api.get("/v1/reward_functions").json()["data"] == []
    assert (
        list((api.settings.data_dir / "reward_functions").glob("*")) == []
        if (api.settings.data_dir / "reward_functions").exists()
        else True
    )


def test_delete_is_refused_while_in_use(api):
    rf = api.reward_function()
    job = api.job(reward_function_id=rf)
    r = api.delete(f"/v1/reward_functions/{rf}")
    assert r.status_code == 409 and r.json()["error"]["code"] == "reward_function_in_use"
    api.post(f"/v1/training_jobs/{job['id']}/cancel")
    assert api.delete(f"/v1/reward_functions/{rf}").json()["deleted"] is True
    assert api.get(f"/v1/reward_functions/{rf}/source").status_code == 404

"""Dataset uploads through the API: detection, row validation, limits, previews, delete."""

import io
import json
import zipfile

import pyarrow as pa
import pyarrow.parquet as pq
from conftest import make_settings
from litestar.testing import TestClient

from veri_box.app import Box, create_app


def stored_entries(api):
    root = api.settings.data_dir / "datasets"
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def test_jsonl_upload_is_detected_and_previewable(api):
    rows = [{"prompt": f"What is {i}+{i}?", "answer": str(2 * i)} for i in range(30)]
    r = api.upload_dataset(rows, name="arith")
    assert r.status_code == 200, r.text
    ds = r.json()
    assert ds["object"] == "dataset" and ds["id"].startswith("ds_")
    assert ds["name"] == "arith" and ds["format"] == "prompt_only" and ds["num_rows"] == 30
    assert ds["columns"] == ["prompt", "answer"]
    assert ds["source_type"] == "upload" and ds["source_uri"] is None and ds["huggingface_dataset"] is None
    assert ds["bytes"] == sum(len(json.dumps(r)) + 1 for r in rows)

    page = api.get(f"/v1/datasets/{ds['id']}/rows?limit=5&offset=25").json()
    assert [row["answer"] for row in page["data"]] == ["50", "52", "54", "56", "58"]
    assert page["has_more"] is False
    assert api.get(f"/v1/datasets/{ds['id']}/rows?limit=5").json()["has_more"] is True
    assert api.get(f"/v1/datasets/{ds['id']}").json() == ds
    assert api.get("/v1/datasets").json()["data"][0]["id"] == ds["id"]


def test_parquet_upload(api):
    table = pa.table(
        {"messages": [[{"role": "user", "content": "hi"}], [{"role": "user", "content": "yo"}]], "level": [1, 2]}
    )
    buf = io.BytesIO()
    pq.write_table(table, buf)
    r = api.upload_dataset(buf.getvalue(), filename="chat.parquet")
    assert r.status_code == 200, r.text
    assert (r.json()["format"], r.json()["num_rows"]) == ("chatml", 2)
    rows = api.get(f"/v1/datasets/{r.json()['id']}/rows").json()["data"]
    assert rows[1]["messages"][0]["content"] == "yo"


def test_video_zip_upload(api):
    from trainers.tiny_video import squares_zip

    r = api.upload_dataset(squares_zip(n=1, frames=9), filename="clips.zip")
    assert r.status_code == 200, r.text
    assert (r.json()["format"], r.json()["num_rows"]) == ("video_captions", 1)
    preview = api.get(f"/v1/datasets/{r.json()['id']}/rows").json()["data"]
    assert (preview[0]["caption"], preview[0]["frames"]) == ("a red square moving right", 9)


def test_bad_uploads_name_the_problem_and_leave_nothing(api):
    good = api.dataset()
    cases = [
        (b'{"prompt": "a"}\n{"prompt": "b"\n', "invalid_json", "Line 2"),
        (b'{"prompt": "a"}\n{"text": "b"}\n', "inconsistent_rows", "Line 2"),
        (b"", "empty_file", None),
        (b"\n\n", "empty_dataset", None),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "unsupported_file_type", None),
    ]
    for body, code, mention in cases:
        r = api.upload_dataset(body)
        assert r.status_code == 400, (body, r.text)
        error = r.json()["error"]
        assert error["code"] == code, (body, error)
        assert error["param"] == "file"
        if mention:
            assert mention in error["message"]
    traversal = io.BytesIO()
    with zipfile.ZipFile(traversal, "w") as zf:
        zf.writestr("metadata.jsonl", '{"video": "../../evil.mp4", "caption": "x"}\n')
        zf.writestr("../../evil.mp4", b"x")
    r = api.upload_dataset(traversal.getvalue(), filename="evil.zip")
    assert r.status_code == 400 and r.json()["error"]["code"] == "unsafe_zip"
    assert not (api.settings.data_dir.parent / "evil.mp4").exists()
    assert stored_entries(api) == [good]
    assert list((api.settings.data_dir / "tmp").iterdir()) == []
    assert [d["id"] for d in api.get("/v1/datasets").json()["data"]] == [good]


def test_oversize_upload_is_a_400(tmp_path):
    settings = make_settings(tmp_path, max_upload_mb=1)
    box = Box.open(settings)
    with TestClient(create_app(box, run_jobs=False)) as client:
        _, key = box.store.create_api_key("t")
        line = json.dumps({"prompt": "x" * 1000}) + "\n"
        body = (line * 1200).encode()  # ~1.2 MB
        r = client.post(
            "/v1/datasets",
            headers={"Authorization": f"Bearer {key}"},
            data={"name": "big"},
            files={"file": ("big.jsonl", body)},
        )
        assert r.status_code == 400
        assert r.json()["error"]["code"] == "file_too_large"
        assert not (settings.data_dir / "datasets").exists() or not any((settings.data_dir / "datasets").iterdir())


def test_missing_file_field(api):
    r = api.post("/v1/datasets", data={"name": "x"}, files={"other": ("a.jsonl", b"{}")})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "file"


def test_pagination_is_newest_first_and_stable(api):
    ids = [api.dataset() for _ in range(5)]
    first = api.get("/v1/datasets?limit=2").json()
    assert [d["id"] for d in first["data"]] == ids[::-1][:2] and first["has_more"]
    second = api.get(f"/v1/datasets?limit=2&after={first['data'][-1]['id']}").json()
    assert [d["id"] for d in second["data"]] == ids[::-1][2:4] and second["has_more"]
    third = api.get(f"/v1/datasets?limit=2&after={second['data'][-1]['id']}").json()
    assert [d["id"] for d in third["data"]] == ids[:1] and not third["has_more"]


def test_delete_is_refused_while_a_job_uses_it(api):
    job = api.job()
    r = api.delete(f"/v1/datasets/{job['dataset_id']}")
    assert r.status_code == 409
    assert r.json()["error"]["type"] == "conflict_error" and job["id"] in r.json()["error"]["message"]
    api.post(f"/v1/training_jobs/{job['id']}/cancel")
    r = api.delete(f"/v1/datasets/{job['dataset_id']}")
    assert r.json() == {"id": job["dataset_id"], "object": "dataset", "deleted": True}
    assert api.get(f"/v1/datasets/{job['dataset_id']}").status_code == 404
    assert job["dataset_id"] not in stored_entries(api)
    # The finished job still reads fine without its dataset.
    assert api.get(f"/v1/training_jobs/{job['id']}").json()["dataset_id"] == job["dataset_id"]

"""Bounds on disk and memory, the trainer's records distrusted, and the API's edges: each test
here reproduces a defect found on a fresh box (real files, real filesystems, real servers)."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Api, make_settings
from litestar.testing import TestClient
from test_dataset_files import VIDEO, metadata

from veri_box import datasets
from veri_box.app import Box, create_app
from veri_box.devices import build_inventory


def open_api(settings) -> Iterator[Api]:
    box = Box.open(settings, build_inventory("A100-80GB:2", settings.cpu_slots))
    with TestClient(create_app(box, run_jobs=False)) as client:
        _, key = box.store.create_api_key("test")
        yield Api(client, key, box)


@pytest.fixture
def small_api(tmp_path: Path) -> Iterator[Api]:
    """A box that takes uploads of at most 1 MiB."""
    yield from open_api(make_settings(tmp_path, max_upload_mb=1))


def spool_files(api: Api) -> list[str]:
    spool = api.settings.data_dir / "tmp"
    return sorted(p.name for p in spool.iterdir()) if spool.exists() else []


def zeros_zip(entries: dict[str, bytes], zeros: dict[str, int]) -> bytes:
    """A zip of `entries` plus entries of many zeros, written in chunks (they compress to almost nothing)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
        for name, size in zeros.items():
            with archive.open(name, "w", force_zip64=True) as out:
                chunk = bytes(1 << 20)
                for _ in range(size >> 20):
                    out.write(chunk)
    return buffer.getvalue()


# ---- 1. uploads leave nothing behind ----------------------------------------------------------


def test_an_oversize_upload_leaves_no_spool_file(small_api):
    r = small_api.upload_dataset(b'{"prompt": "x"}\n' * 100_000)  # 1.6 MB
    assert r.status_code == 400 and r.json()["error"]["code"] == "file_too_large", r.text
    assert spool_files(small_api) == []


def test_a_refused_upload_leaves_no_spool_file(api):
    r = api.upload_dataset(b"not a dataset\x00", filename="x.bin")
    assert r.status_code == 400, r.text
    assert spool_files(api) == []


def test_cleanup_leftovers_removes_what_a_crash_left(tmp_path):
    data_dir = tmp_path / "data"
    (data_dir / "tmp").mkdir(parents=True)
    (data_dir / "tmp" / "upload-abc123").write_bytes(b"half an upload")
    staging = data_dir / "datasets" / ".staging-ds_0123"
    (staging / "videos").mkdir(parents=True)
    (staging / "videos" / "a.mp4").write_bytes(VIDEO)
    kept = data_dir / "datasets" / "ds_0456"
    kept.mkdir()
    (kept / "data.jsonl").write_text('{"prompt": "x"}\n')
    assert datasets.cleanup_leftovers(data_dir) == 2
    assert list((data_dir / "tmp").iterdir()) == []
    assert [p.name for p in (data_dir / "datasets").iterdir()] == ["ds_0456"]
    assert datasets.cleanup_leftovers(tmp_path / "never-used") == 0


# ---- 2. zip datasets unpack only what their captions name ------------------------------------


GOOD_ROWS = metadata({"video": "a.mp4", "caption": "a"})


def test_a_zip_stores_only_the_clips_its_captions_name(small_api):
    content = zeros_zip({"metadata.jsonl": GOOD_ROWS, "a.mp4": VIDEO}, {"junk/zeros.bin": 64 << 20})
    assert len(content) < 1 << 20
    r = small_api.upload_dataset(content, filename="clips.zip")
    assert r.status_code == 200, r.text
    stored = small_api.settings.data_dir / "datasets" / r.json()["id"]
    assert sorted(p.relative_to(stored).as_posix() for p in stored.rglob("*") if p.is_file()) == [
        "videos/a.mp4",
        "videos/metadata.jsonl",
    ]


def test_the_unpacked_clips_are_capped_by_the_upload_limit(small_api):
    # 1 MiB uploads: the clips may unpack to 256 MiB at most (4 x the limit, but at least 256 MiB).
    rows = metadata({"video": "a.mp4", "caption": "a"}, {"video": "b.mp4", "caption": "b"})
    content = zeros_zip({"metadata.jsonl": rows, "a.mp4": VIDEO}, {"b.mp4": 257 << 20})
    assert len(content) < 1 << 20
    r = small_api.upload_dataset(content, filename="clips.zip")
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "unsafe_zip" and "--max-upload-mb" in error["message"], error
    stored = small_api.settings.data_dir / "datasets"
    assert spool_files(small_api) == [] and (not stored.exists() or not any(stored.iterdir()))


def test_limits_follow_the_upload_setting():
    from veri_box.dataset_files import Limits

    assert Limits.for_upload(2048 << 20).max_unpacked_bytes == 8 << 30
    assert Limits.for_upload(1 << 20).max_unpacked_bytes == 256 << 20

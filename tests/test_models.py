"""Models at submit: base_model resolved as the trainer resolves it (built-ins, local folders, the
Hugging Face cache), 400 model_not_found / model_incompatible, and GET /v1/models."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from hf_cache import COGVIDEOX_2B, QWEN3_4B, cache_model
from serving import FAKE_TRAINERS, KEY, Server

from trainers.tiny_video import squares_zip
from veri_box import models


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory) -> Path:
    from trainers.tiny import build_tiny_lm

    return build_tiny_lm(tmp_path_factory.mktemp("tiny") / "tiny-lm", seed=0)


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory) -> Path:
    from trainers.tiny_video import build_tiny_video_pipeline

    return build_tiny_video_pipeline(tmp_path_factory.mktemp("tiny") / "tiny-cogvideox")


def job_body(api, base_model: str, method: str = "grpo", **extra) -> dict:
    body = {"base_model": base_model, "output_name": "o", "gpu": {"type": "cpu"}, "method": method, **extra}
    if method == "grpo":
        body.setdefault("dataset_id", api.dataset())
        body.setdefault("reward_function_id", api.reward_function())
    return body


def error_of(r, status: int = 400) -> dict:
    assert r.status_code == status, r.text
    return r.json()["error"]


# -- what a model's files say --------------------------------------------------------------------


def test_parameter_counts_from_config_arithmetic_match_the_weights(tiny_lm, tiny_pipeline):
    """The arithmetic the box uses when a folder has no weights gives the count the real
    safetensors files hold, for the tiny models the trainers build."""
    config = json.loads((tiny_lm / "config.json").read_text())
    assert models.lm_parameters(config) == models._safetensors_parameters(tiny_lm)
    transformer = json.loads((tiny_pipeline / "transformer" / "config.json").read_text())
    counted = models._safetensors_parameters(tiny_pipeline / "transformer")
    assert abs(models.cogvideox_transformer_parameters(transformer) - counted) / counted < 0.05
    encoder = json.loads((tiny_pipeline / "text_encoder" / "config.json").read_text())
    counted = models._safetensors_parameters(tiny_pipeline / "text_encoder")
    assert abs(models.t5_encoder_parameters(encoder) - counted) / counted < 0.05


def test_real_model_shapes_give_their_published_sizes():
    assert round(models.lm_parameters(QWEN3_4B) / 1e9, 2) == 4.02  # Qwen3-4B: 4.02 B
    transformer = COGVIDEOX_2B["transformer/config.json"]
    assert round(models.cogvideox_transformer_parameters(transformer) / 1e9, 2) == 1.69  # CogVideoX-2b
    encoder = COGVIDEOX_2B["text_encoder/config.json"]
    assert round(models.t5_encoder_parameters(encoder) / 1e9, 2) == 4.76  # T5 v1.1 XXL encoder


def test_closest_names_by_edit_distance():
    have = ["veri-box/tiny-lm", "veri-box/tiny-cogvideox", "Qwen/Qwen3-4B", "Qwen/Qwen3-0.6B"]
    assert models.closest("veri-box/tiny_lm", have)[0] == "veri-box/tiny-lm"
    assert models.closest("qwen/qwen3-4b", have)[0] == "Qwen/Qwen3-4B"
    assert models.closest("Qwen3-0.6B", have) == ["Qwen/Qwen3-0.6B"]  # the same name, owner left out
    assert models.closest("meta-llama/Llama-3.1-8B", have) == []
    assert models.edit_distance("kitten", "sitting") == 3


# -- through the API (in-process; this box's cache is tests/hf_cache.py's) ---------------------------


def test_the_model_list_has_the_built_ins_the_cache_and_local_folders(api, tiny_lm):
    listed = {m["id"]: m for m in api.get("/v1/models").json()["data"]}
    tiny = listed["veri-box/tiny-lm"]
    # Built-ins are there before any job has built them, so a new box can discover them.
    assert tiny["source"] == "built_in" and tiny["methods"] == ["grpo"] and tiny["architecture"] == "Qwen2ForCausalLM"
    assert tiny["size_bytes"] is None and tiny["parameters"] == models.lm_parameters(models._tiny_lm_config())
    assert listed["veri-box/tiny-cogvideox"]["methods"] == ["sft_video_gen"]
    qwen = listed["Qwen/Qwen3-4B"]
    assert (qwen["source"], qwen["architecture"], qwen["methods"]) == ("hf_cache", "Qwen3ForCausalLM", ["grpo"])
    assert qwen["parameters"] == 4_022_458_880 and qwen["size_bytes"] > 0
    cog = listed["THUDM/CogVideoX-2b"]
    assert cog["architecture"] == "CogVideoXPipeline" and cog["methods"] == ["sft_video_gen"]
    assert 6.5e9 < cog["parameters"] < 6.8e9  # transformer 1.69 B + T5 4.76 B + VAE 0.22 B
    assert str(tiny_lm) not in listed
    # A local folder is known once a job has named it.
    api.job(base_model=str(tiny_lm))
    listed = {m["id"]: m for m in api.get("/v1/models").json()["data"]}
    local = listed[str(tiny_lm)]
    assert local["source"] == "local" and local["parameters"] == models._safetensors_parameters(tiny_lm)
    assert local["size_bytes"] == sum(f.stat().st_size for f in tiny_lm.iterdir())


def test_a_model_of_the_wrong_kind_is_refused_naming_what_it_fits(api, tiny_pipeline, tiny_lm):
    error = error_of(api.post("/v1/training_jobs", json=job_body(api, "THUDM/CogVideoX-2b")))
    assert (error["code"], error["param"]) == ("model_incompatible", "base_model")
    assert "CogVideoXPipeline" in error["message"] and "sft_video_gen" in error["message"]
    error = error_of(api.post("/v1/training_jobs", json=job_body(api, str(tiny_pipeline))))
    assert error["code"] == "model_incompatible"
    video = api.upload_dataset(squares_zip(n=1, frames=9), "c.zip")
    body = job_body(api, str(tiny_lm), "sft_video_gen", dataset_id=video.json()["id"])
    error = error_of(api.post("/v1/training_jobs", json=body))
    assert error["code"] == "model_incompatible" and "Qwen2ForCausalLM" in error["message"]
    folder = tiny_lm.parent / "not-a-model"
    folder.mkdir(exist_ok=True)
    error = error_of(api.post("/v1/training_jobs", json=job_body(api, str(folder))))
    assert error["code"] == "model_incompatible" and "without a model config" in error["message"]
    assert api.get("/v1/training_jobs").json()["data"] == []


def test_built_in_and_cached_models_are_accepted(api, tmp_path):
    assert api.job(base_model="veri-box/tiny-lm")["status"] == "queued"
    # A snapshot with weights is counted from their safetensors header, not its config.
    snapshot = cache_model(tmp_path / "hf-cache", "org/with-weights", QWEN3_4B)  # the api fixture's cache
    header = json.dumps({"w": {"dtype": "BF16", "shape": [1000, 7], "data_offsets": [0, 14000]}}).encode()
    (snapshot / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + bytes(14000))
    job = api.job(base_model="org/with-weights")
    listed = {m["id"]: m for m in api.get("/v1/models").json()["data"]}
    assert job["status"] == "queued" and listed["org/with-weights"]["parameters"] == 7000


# -- through a real server ---------------------------------------------------------------------------


@pytest.fixture
def server(tmp_path, monkeypatch) -> Server:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    cache_model(tmp_path / "hf-cache", "Qwen/Qwen3-4B", QWEN3_4B)
    box = Server(tmp_path / "data", tmp_path / "serve.log", "--gpus", "none", "--cpu-slots", "1")
    box.start()
    yield box
    box.stop()


def http_job(server: Server, http: httpx.Client, base_model: str) -> httpx.Response:
    dataset = http.post(
        "/v1/datasets", data={"name": "d"}, files={"file": ("d.jsonl", b'{"prompt": "hi"}\n', "application/jsonl")}
    ).json()["id"]
    source = "def reward(completions, **kwargs):\n    return [0.0] * len(completions)\n"
    body = {"base_model": base_model, "dataset_id": dataset, "reward_source": source, "gpu": {"type": "cpu"}}
    return http.post("/v1/training_jobs", json=body)


def test_a_missing_model_is_refused_at_submit_with_what_to_do(server, tmp_path):
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key_of(server)}"}) as http:
        error = error_of(http_job(server, http, "veri-box/tiny_lm"))
        assert (error["code"], error["param"]) == ("model_not_found", "base_model")
        assert "Did you mean 'veri-box/tiny-lm'" in error["message"]
        assert "download" not in error["message"]  # no Hub has the box's own namespace
        error = error_of(http_job(server, http, "Qwen/Qwen3-0.6B"))
        message = error["message"]
        assert error["code"] == "model_not_found" and str(tmp_path / "hf-cache") in message
        assert "hf download Qwen/Qwen3-0.6B" in message and "huggingface-cli download" in message
        assert "'Qwen/Qwen3-4B'" in message  # the box's nearest model
        error = error_of(http_job(server, http, str(tmp_path / "no-such-folder")))
        assert error["code"] == "model_not_found" and str(tmp_path / "no-such-folder") in error["message"]
        assert http.get("/v1/training_jobs").json()["data"] == []


def key_of(server: Server) -> str:
    return KEY.search(server.output()).group(0)


def test_custom_trainers_decide_what_base_model_means(tmp_path, monkeypatch):
    """With `--trainers`, base_model is the custom trainer's to read (tests/fake_trainer.py
    takes its behaviour from it): the box does not check it."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    box = Server(tmp_path / "data", tmp_path / "serve.log", "--gpus", "none", "--trainers", FAKE_TRAINERS)
    box.start()
    try:
        with httpx.Client(base_url=box.url, headers={"Authorization": f"Bearer {key_of(box)}"}) as http:
            r = http_job(box, http, "fake:steps=1")
            assert r.status_code == 200, r.text
            assert r.json()["memory_estimate_gb"] is None
    finally:
        box.stop()

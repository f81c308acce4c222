"""The memory fit: the estimator against the measured table (bench/memory_table.py), its parts,
and submit-time refusals and warnings, through a real server."""

from __future__ import annotations

import json
import sys

import httpx
import pytest
from hf_cache import COGVIDEOX_2B, QWEN3_4B, cache_model
from serving import KEY, REPO, Server

from veri_box import hyperparameters, memory, models

sys.path.insert(0, str(REPO / "bench"))
import memory_table  # noqa: E402

QWEN3 = {**QWEN3_4B, "parameters": models.lm_parameters(QWEN3_4B)}
MEASURED = memory_table.measured()
NOT_MEASURED = (
    "no GPU memory figure to hold the estimator to yet: bench/results/ has no bench/gpu_check.py report "
    "(memory_fit.jsonl bf16 rows, gpu_check.json video shapes) and memory_table.MEASURED is empty; "
    "on a GPU, run bench/gpu_check.py --phases grpo,video and copy its $OUT to bench/results/DATE-GPUTYPE/ "
    "(bench/memory_table.py's docstring)"
)


# -- the measured table ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "figure",
    MEASURED or [pytest.param(None, marks=pytest.mark.skip(reason=NOT_MEASURED))],
    ids=lambda f: f and f"{f['point']}@{f['source']}",
)
def test_the_estimate_is_within_20_percent_of_every_measured_point(figure):
    point = next(p for p in memory_table.POINTS if p["name"] == figure["point"])
    estimate = memory_table.estimate_gib(point)
    assert abs(estimate - figure["peak_gib"]) <= memory_table.TOLERANCE * figure["peak_gib"], (estimate, figure)


def test_gpu_check_reports_become_measured_points(tmp_path):
    """A GPU check run's files, in the shapes bench/gpu_check.py writes them, fill the table: its
    bf16 GRPO rows (box and bare trainer each) and its video shapes; a --cpu run's RSS rows do not."""
    run = tmp_path / "2026-12-02-H100-80GB"
    run.mkdir()
    rows = [
        {"model_params": 358356864, "method": "lora", "completions": 64, "tokens": 256, "peak_gib": 2.4,
         "trainer": "box", "device": "H100-80GB", "dtype": "bfloat16"},
        {"model_params": 358356864, "method": "lora", "completions": 64, "tokens": 256, "peak_gib": 2.3,
         "trainer": "bare", "device": "H100-80GB", "dtype": "bfloat16"},
        {"model_params": 1000, "method": "full", "completions": 16, "tokens": 16, "peak_gib": 0.9,
         "trainer": "box", "device": "cpu", "dtype": "float32"},
    ]  # fmt: skip
    (run / "memory_fit.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    video = {"status": "ok", "shapes": {"2b": {"status": "ok", "peak_memory_gib": 7.9, "device": "NVIDIA H100"}}}
    (run / "gpu_check.json").write_text(json.dumps({"phases": {"video": video}}))
    found = memory_table.reported(tmp_path)
    assert [(f["point"], f["peak_gib"]) for f in found] == [
        ("grpo-0.5b-shape-lora", 2.4),
        ("grpo-0.5b-shape-lora", 2.3),
        ("video-lora-step-2b", 7.9),
    ]
    table = {(r["point"], r["measured_gib"]): r for r in memory_table.table(tmp_path)}
    row = table[("video-lora-step-2b", 7.9)]
    assert row["error"] == round((row["estimate_gib"] - 7.9) / 7.9, 3)
    assert table[("grpo-0.5b-shape-full", None)]["source"] == "not measured yet"


# -- the estimate's parts --------------------------------------------------------------------------


def grpo(**hp) -> dict:
    return hyperparameters.resolve("grpo", hp)


def test_weights_optimizer_and_reference_follow_the_training_mode():
    gib = memory.GIB
    full = memory.grpo_phases(QWEN3, grpo(), 1, 40)["training"]
    assert full["weights"] == QWEN3["parameters"] * 2  # bf16
    assert full["reference_model"] == full["weights"]  # TRL's frozen copy for the KL term
    assert full["optimizer_state"] == 2 * full["weights"]  # AdamW's two moments, bf16 like the weights
    no_kl = memory.grpo_phases(QWEN3, grpo(kl_coef=0), 1, 40)["training"]
    assert no_kl["reference_model"] == 0
    lora = memory.grpo_phases(QWEN3, grpo(lora_rank=16), 1, 40)["training"]
    assert lora["reference_model"] == 0  # the base with the adapter off
    trainable = memory.lora_parameters(QWEN3, 16)
    assert 30e6 < trainable < 35e6  # Qwen3-4B all-linear r16: 33 M
    assert lora["optimizer_state"] == trainable * 8 and lora["lora_adapter"] == trainable * 4
    qlora = memory.grpo_phases(QWEN3, grpo(lora_rank=16, load_in_4bit=True), 1, 40)["training"]
    assert 2.0 * gib < qlora["weights"] < 3.0 * gib  # NF4 linears, bf16 embeddings
    totals = [memory.estimate("causal_lm", QWEN3, grpo(**hp), 1, 40).total_gb for hp in
              ({}, {"lora_rank": 16}, {"lora_rank": 16, "load_in_4bit": True})]  # fmt: skip
    assert totals == sorted(totals, reverse=True)


def test_batch_length_and_gpus_move_the_estimate():
    def total(hp: dict, gpus: int = 1, prompt: int = 40) -> float:
        return memory.estimate("causal_lm", QWEN3, grpo(lora_rank=16, **hp), gpus, prompt).total_gb

    assert total({"max_response_length": 4096}) > total({}) > total({"max_response_length": 512})
    assert total({"global_batch_size": 256}) > total({"global_batch_size": 64})
    assert total({"global_batch_size": 256}, gpus=4) < total({"global_batch_size": 256})
    assert total({}, prompt=1000) > total({}, prompt=40)
    kv = memory.grpo_phases(QWEN3, grpo(global_batch_size=64, max_response_length=2048), 1, 48)["generation"]
    assert kv["kv_cache"] == 64 * (48 + 2048) * 36 * 2 * 8 * 128 * 2  # sequences x tokens x layers x K,V x heads x dim


def test_video_phases_count_t5_while_encoding_and_the_lora_while_training():
    transformer = COGVIDEOX_2B["transformer/config.json"]
    config = {
        "transformer": transformer,
        "transformer_parameters": models.cogvideox_transformer_parameters(transformer),
        "text_encoder_parameters": models.t5_encoder_parameters(COGVIDEOX_2B["text_encoder/config.json"]),
        "vae_parameters": models.COGVIDEOX_VAE_PARAMETERS,
    }
    hp = hyperparameters.resolve("sft_video_gen", {})
    phases = memory.video_phases(config, hp)
    assert "text_encoder_weights" in phases["encoding"] and "text_encoder_weights" not in phases["training"]
    assert memory.video_tokens(transformer, hp) == 13 * 30 * 45  # 49 frames at 480x720: 17,550
    assert phases["training"]["lora_adapter"] == 30 * 4 * 64 * 2 * 1920 * 4
    bigger = memory.video_phases(config, {**hp, "num_frames": 97})["training"]["activations"]
    assert bigger > 1.8 * phases["training"]["activations"]


def test_card_memory_comes_from_the_type_name():
    assert memory.gpu_memory_gb("H100-80GB") == 80 and memory.gpu_memory_gb("A100-40GB") == 40
    assert memory.gpu_memory_gb("RTX4090-24GB") == 24 and memory.gpu_memory_gb("H200-141GB") == 141
    assert memory.gpu_memory_gb("cpu") is None and memory.gpu_memory_gb("T4") is None


def test_verdicts_leave_the_estimators_margin():
    assert memory.verdict(60, 80) == "fits"
    assert memory.verdict(75, 80) == "borderline"  # could be 20% more
    assert memory.verdict(95, 80) == "borderline"  # could be 20% less and fit
    assert memory.verdict(101, 80) == "will_not_fit"


# -- at submit, through a real server ------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Server:
    base = tmp_path_factory.mktemp("memory")
    cache_model(base / "hf-cache", "Qwen/Qwen3-4B", QWEN3_4B)
    patch = pytest.MonkeyPatch()
    patch.setenv("HF_HUB_CACHE", str(base / "hf-cache"))
    box = Server(base / "data", base / "serve.log", "--gpus", "A10-24GB:2,H100-80GB:1", "--cpu-slots", "1")
    box.start()
    yield box
    box.stop()
    patch.undo()


@pytest.fixture
def http(server: Server):
    key = KEY.search(server.output()).group(0)
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        yield client


def submit(http: httpx.Client, gpu: str, **hp) -> httpx.Response:
    rows = b'{"prompt": "What is 2+2?"}\n{"prompt": "Say hi"}\n'
    dataset = http.post("/v1/datasets", data={"name": "d"}, files={"file": ("d.jsonl", rows, "application/jsonl")})
    body = {
        "base_model": "Qwen/Qwen3-4B",
        "dataset_id": dataset.json()["id"],
        "reward_source": "def reward(completions, **kwargs):\n    return [0.0] * len(completions)\n",
        "gpu": {"type": gpu, "count": 1},
        "hyperparameters": hp,
    }
    return http.post("/v1/training_jobs", json=body)


def test_a_job_that_cannot_fit_is_refused_with_the_estimate_and_the_change_that_fits(server, http):
    folder = server.data_dir / "reward_functions"
    before = sorted(folder.iterdir()) if folder.exists() else []
    r = submit(http, "A10-24GB")
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert (error["code"], error["param"]) == ("will_not_fit", "hyperparameters.lora_rank")
    message = error["message"]
    assert "GiB per GPU" in message and "A10-24GB has 24 GB" in message and "optimizer state" in message
    assert "The cheapest change that fits: QLoRA" in message
    assert http.get("/v1/training_jobs").json()["data"] == []
    assert (sorted(folder.iterdir()) if folder.exists() else []) == before  # its inline source not kept


def test_the_suggested_change_is_accepted_and_the_estimate_kept(http):
    r = submit(http, "A10-24GB", lora_rank=16, load_in_4bit=True, max_response_length=1024)
    assert r.status_code == 200, r.text
    job = r.json()
    assert 10 < job["memory_estimate_gb"] < 24 * 0.85
    events = http.get(f"/v1/training_jobs/{job['id']}/events").json()["items"]
    assert "memory_warning" not in [e["event_type"] for e in events]
    http.post(f"/v1/training_jobs/{job['id']}/cancel")


def test_a_borderline_job_is_accepted_with_a_warning(http):
    r = submit(http, "H100-80GB")  # the full fine-tune: ~69 GiB of 80
    assert r.status_code == 200, r.text
    job = r.json()
    http.post(f"/v1/training_jobs/{job['id']}/cancel")
    events = http.get(f"/v1/training_jobs/{job['id']}/events").json()["items"]
    warning = next(e for e in events if e["event_type"] == "memory_warning")
    assert warning["metadata"]["estimate_gb"] == job["memory_estimate_gb"]
    assert warning["metadata"]["gpu_memory_gb"] == 80 and "may run out of memory" in warning["metadata"]["message"]


def test_the_cpu_pool_is_not_checked(http):
    r = submit(http, "cpu", max_response_length=100_000)
    assert r.status_code == 200, r.text
    http.post(f"/v1/training_jobs/{r.json()['id']}/cancel")

"""A deployment that cannot fit its GPUs is refused at create (400 `will_not_fit`, nothing
stored), not after minutes of loading: through a real `veri-box serve` with declared GPU types
(no vLLM here: the transformers engine's estimate). The models are folders holding only a
config.json at a real model's shape: the check reads nothing else, and a refused one is never
loaded (an accepted one is stopped at once)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from serving import KEY, Server
from test_deployments import deploy, http, openai_error

SMALL, LARGE, UNSIZED = "RTX4090-24GB", "H100-80GB", "MYSTERY"
QWEN2 = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "torch_dtype": "bfloat16"}
# Qwen2.5-14B-Instruct's config.json (14.8 B parameters, 27.5 GiB in bf16) and Llama-3-70B's.
SHAPE_14B = {
    "hidden_size": 5120,
    "num_hidden_layers": 48,
    "num_attention_heads": 40,
    "num_key_value_heads": 8,
    "intermediate_size": 13824,
    "vocab_size": 152064,
    "tie_word_embeddings": False,
    "max_position_embeddings": 32768,
}
SHAPE_70B = {
    **SHAPE_14B,
    "hidden_size": 8192,
    "num_hidden_layers": 80,
    "num_attention_heads": 64,
    "intermediate_size": 28672,
    "vocab_size": 128256,
}
ESTIMATE = re.compile(r"needs about ([\d.]+) GiB per GPU")


def model_folder(root: Path, name: str, shape: dict) -> str:
    folder = root / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**QWEN2, **shape}))
    return str(folder)


def start(root: Path, gpus: str) -> Server:
    server = Server(root / "data", root / "serve.log", "--gpus", gpus, "--cpu-slots", "1")
    server.key = KEY.search(server.start()).group(0)
    return server


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Four 24 GB cards, one 80 GB card, one card whose memory its name does not say."""
    root = tmp_path_factory.mktemp("fit")
    server = start(root, f"{SMALL}:4,{LARGE}:1,{UNSIZED}:1")
    server.models = root
    yield server
    server.stop()


def accepted(client: httpx.Client, response: httpx.Response) -> dict:
    """The created deployment, stopped at once (a config-only folder has no weights to load)."""
    assert response.status_code == 200, response.text
    dep = response.json()
    assert client.post(f"/v1/deployments/{dep['id']}/stop").status_code == 200
    return dep


def memory_event(dep: dict) -> dict | None:
    return next((e["metadata"] for e in dep["events"] if e["type"] == "memory_estimate"), None)


def test_a_14b_model_on_one_24gb_card_is_refused_with_more_gpus_and_fits_on_three(box: Server):
    client = http(box)
    model = model_folder(box.models, "qwen-14b", SHAPE_14B)
    before = client.get("/v1/deployments").json()["data"]

    error = openai_error(deploy(client, model, "huggingface", gpu_type=SMALL, gpu_count=1), 400, "gpu.gpu_count")
    assert error["code"] == "will_not_fit", error
    message = error["message"]
    # bf16 weights 27.5 GiB, a 16 x 4096-token KV cache 12 GiB, prefill 1.0, CUDA context 0.75.
    needed = float(ESTIMATE.search(message).group(1))
    assert 40 < needed < 48, message
    assert "weights 27.5" in message and "kv cache 12" in message and f"one {SMALL} has 24 GB" in message
    assert "The cheapest change that fits: gpu_count 3" in message, message
    assert client.get("/v1/deployments").json()["data"] == before  # nothing stored

    # Two: about 22 GiB a card, close to 24: accepted, the estimate and the warning recorded.
    two = accepted(client, deploy(client, model, "huggingface", gpu_type=SMALL, gpu_count=2))
    warned = memory_event(two)
    assert warned["verdict"] == "borderline" and 20 < warned["estimate_gb"] < 24, warned
    assert warned["gpu_memory_gb"] == 24 and "may run out of memory" in warned["message"]
    assert set(warned["parts"]) == {"weights", "kv_cache", "activations", "overhead"}

    three = accepted(client, deploy(client, model, "huggingface", gpu_type=SMALL, gpu_count=3))
    assert three["gpu"]["gpu_count"] == 3 and three["engine"] == "transformers"
    fits = memory_event(three)
    assert fits["verdict"] == "fits" and 13 < fits["estimate_gb"] < 17 and "message" not in fits, fits

    # One 80 GB card holds it whole.
    large = accepted(client, deploy(client, model, "huggingface", gpu_type=LARGE, gpu_count=1))
    assert memory_event(large)["verdict"] == "fits"


def test_a_model_no_card_of_the_box_fits_names_what_dominates(box: Server):
    client = http(box)
    model = model_folder(box.models, "llama-70b", SHAPE_70B)
    error = openai_error(deploy(client, model, "huggingface", gpu_type=SMALL, gpu_count=4), 400, "model")
    assert error["code"] == "will_not_fit", error
    assert "No GPU count or type this box has fits it; its weights" in error["message"], error
    assert "on 4 GPUs with transformers" in error["message"]


def test_the_cpu_pool_and_an_unsized_card_are_not_checked(box: Server):
    client = http(box)
    tiny = accepted(client, deploy(client, "veri-box/tiny-lm", "huggingface"))
    assert tiny["gpu"]["gpu_type"] == "cpu" and memory_event(tiny) is None
    model = model_folder(box.models, "qwen-14b-unsized", SHAPE_14B)
    unsized = accepted(client, deploy(client, model, "huggingface", gpu_type=UNSIZED))
    assert memory_event(unsized) is None


def test_a_larger_card_is_suggested_when_more_small_ones_would_not_do(tmp_path: Path):
    server = start(tmp_path, f"{SMALL}:1,{LARGE}:1")
    try:
        client = http(server)
        model = model_folder(tmp_path, "qwen-14b", SHAPE_14B)
        error = openai_error(deploy(client, model, "huggingface", gpu_type=SMALL), 400, "gpu.gpu_type")
        assert error["code"] == "will_not_fit"
        assert f"The cheapest change that fits: gpu_type {LARGE} (about" in error["message"], error
    finally:
        server.stop()

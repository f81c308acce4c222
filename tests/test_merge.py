"""Merged weights and portable outputs, end to end: a real tiny LoRA GRPO job whose base model is
a Hub id found in a Hugging Face cache (so the trainer loads it from a snapshot folder of this
box), merged through the API by the real trainers/merge.py in the sandbox, then both the
adapter and the merged model loaded by PEFT and transformers from copies moved off the box,
in a fresh interpreter whose only Hugging Face cache is one HF_HOME points at."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import Api, finished

from trainers import model_card
from veri_box import cpu_child, demo, merges, sandbox
from veri_box.errors import ApiError

HUB_ID = "veri-test/tiny-chat"
HP = {**{k: v for k, v in demo.HYPERPARAMETERS.items() if k != "max_steps"}, "max_steps": 3, "seed": 0}


def cache_real_model(cache: Path, repo_id: str, source: Path) -> Path:
    """`source`'s files as a snapshot of `repo_id` in an HF cache (the layout `hf download` leaves)."""
    revision = hashlib.sha1(repo_id.encode()).hexdigest()
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / revision
    shutil.copytree(source, snapshot)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return snapshot


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from trainers.tiny import build_tiny_lm

    return build_tiny_lm(tmp_path_factory.mktemp("tiny") / "model", seed=0)


def lora_job(box: Api, base_model: str, **hp) -> str:
    dataset = box.dataset([{"prompt": p} for p in demo.PROMPTS])
    rf = box.reward_function(demo.REWARD, name="letter_a")
    return box.job(base_model=base_model, dataset_id=dataset, reward_function_id=rf, hyperparameters={**HP, **hp})["id"]


def wait_merge(box: Api, job_id: str, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        merge = box.get(f"/v1/training_jobs/{job_id}/merge").json()
        if merge["status"] != "merging":
            return merge
        time.sleep(0.5)
    raise AssertionError("the merge did not end in time")


def download(box: Api, files: list[dict], target: Path) -> Path:
    for f in files:
        path = target / f["path"]
        path.parent.mkdir(parents=True, exist_ok=True)
        response = box.client.get(f["url"].removeprefix(box.settings.base_url))
        assert response.status_code == 200, response.text
        path.write_bytes(response.content)
    return target


# Loads the copies as a user elsewhere would: by the base's Hub id, from HF_HOME's cache, offline.
ELSEWHERE = """
import json, sys, torch
from peft import AutoPeftModelForCausalLM, PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer
adapter, merged = sys.argv[1], sys.argv[2]
base_id = json.load(open(adapter + "/adapter_config.json"))["base_model_name_or_path"]
tokenizer = AutoTokenizer.from_pretrained(merged)
text = tokenizer.apply_chat_template([{"role": "user", "content": "Say something:"}], tokenize=False,
                                     add_generation_prompt=True)
inputs = tokenizer(text, return_tensors="pt")
with torch.no_grad():
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_id), adapter).eval()
    auto = AutoPeftModelForCausalLM.from_pretrained(adapter).eval()
    model = AutoModelForCausalLM.from_pretrained(merged).eval()
    base = AutoModelForCausalLM.from_pretrained(base_id).eval()
    want = peft_model(**inputs).logits
    out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    print(json.dumps({
        "base_id": base_id,
        "merged_matches_adapter": bool(torch.allclose(model(**inputs).logits, want, atol=1e-4)),
        "auto_matches_adapter": bool(torch.allclose(auto(**inputs).logits, want, atol=1e-5)),
        "lora_changed_the_model": not bool(torch.allclose(base(**inputs).logits, want, atol=1e-4)),
        "new_tokens": int(out.shape[1] - inputs["input_ids"].shape[1]),
        "peft_layers_in_merged": sum("lora" in n for n, _ in model.named_parameters()),
    }))
"""


def test_lora_job_merges_and_both_outputs_load_off_the_box(box, tiny_model, tmp_path):
    snapshot = cache_real_model(Path(os.environ["HF_HUB_CACHE"]), HUB_ID, tiny_model)
    job_id = lora_job(box, HUB_ID)
    before = box.post(f"/v1/training_jobs/{job_id}/merge")  # still queued
    assert (before.status_code, before.json()["error"]["code"]) == (409, "job_not_completed")
    job = finished(box, job_id)
    assert job["status"] == "completed", box.get(f"/v1/training_jobs/{job_id}/logs/full").text[-3000:]
    log = box.get(f"/v1/training_jobs/{job_id}/logs/full").text
    assert f"from {snapshot}" in log  # the trainer did load it from this box's snapshot folder

    # The adapter names its base as the user did, and carries its card.
    files = box.get(f"/v1/training_jobs/{job_id}/model").json()["files"]
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= {f["path"] for f in files}
    adapter = download(box, files, tmp_path / "laptop" / "adapter")
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == HUB_ID
    assert str(snapshot) not in (adapter / "README.md").read_text()

    assert box.get(f"/v1/training_jobs/{job_id}/merge").json()["status"] == "not_merged"
    job_dir = box.settings.data_dir / "jobs" / job_id
    if sandbox.resolve(box.settings.sandbox) == sandbox.Mode.BWRAP:  # the child runs as a trainer does
        command, env = cpu_child.command(
            box.settings, box.store.get_job(job_id), merges.MODULE, job_dir / merges.WORK_DIR
        )
        assert (
            "bwrap" in command[4]
            and ["--ro-bind", str(job_dir), str(job_dir)]
            == command[command.index(str(job_dir)) - 1 : command.index(str(job_dir)) + 2]
        )
        assert "OPENREWARD" not in json.dumps(env) and env["CUDA_VISIBLE_DEVICES"] == ""

    # A merge that fails (the adapter's weights gone) says why and leaves nothing half-written;
    # ensure_merged (the Hub push's call) raises it.
    weights = job_dir / "output" / "adapter_model.safetensors"
    weights.rename(tmp_path / "weights")
    with pytest.raises(ApiError) as failed:
        merges.ensure_merged(box.box, job_id)
    assert failed.value.code == "merge_failed" and "exit code 1" in failed.value.message
    state = box.get(f"/v1/training_jobs/{job_id}/merge").json()
    assert (state["status"], state["error"]["code"]) == ("failed", "merge_failed")
    assert not (job_dir / "merged").exists() and not (job_dir / merges.WORK_DIR).exists()
    (tmp_path / "weights").rename(weights)

    started = box.post(f"/v1/training_jobs/{job_id}/merge")
    assert started.status_code == 200, started.text
    assert started.json()["status"] == "merging"
    again = box.post(f"/v1/training_jobs/{job_id}/merge")
    assert (again.status_code, again.json()["error"]["code"]) == (409, "merge_in_progress")
    gone = box.delete(f"/v1/training_jobs/{job_id}")  # the merge is still writing into the job's folder
    assert (gone.status_code, gone.json()["error"]["code"]) == (409, "merge_in_progress")
    # The Hub push asking meanwhile waits for this merge rather than starting a second one.
    assert merges.ensure_merged(box.box, job_id) == job_dir / "merged"
    merge = wait_merge(box, job_id)
    assert merge["status"] == "completed", (merge, (job_dir / "merge.log").read_text())
    assert "merging the LoRA" in (job_dir / "merge.log").read_text()
    names = {f["path"] for f in merge["files"]}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md"} <= names
    assert not any("adapter" in n for n in names)
    assert merge["size_bytes"] == sum(f["bytes"] for f in merge["files"])
    events = [e["event_type"] for e in box.get(f"/v1/training_jobs/{job_id}/events?limit=1000").json()["items"]]
    assert events[-4:] == ["merge_started", "merge_failed", "merge_started", "merge_completed"]
    # Merging again is a no-op answering the merged model; the merged files are listed with the model's.
    assert box.post(f"/v1/training_jobs/{job_id}/merge").json()["status"] == "completed"
    listed = box.get(f"/v1/training_jobs/{job_id}/model?artifact=merged").json()["files"]
    assert {f["path"] for f in listed} == names
    wrong = box.get(f"/v1/training_jobs/{job_id}/model?artifact=everything")
    assert (wrong.status_code, wrong.json()["error"]["code"]) == (400, "invalid_value")

    merged = download(box, merge["files"], tmp_path / "laptop" / "merged")
    card = (merged / "README.md").read_text()
    assert f'base_model: "{HUB_ID}"' in card and "with the LoRA adapter merged" in card
    assert model_card.load_snippet("merged", HUB_ID) in card
    # No file of either copy names this box's snapshot folder (configs, tokenizer, cards).
    for path in [*adapter.iterdir(), *merged.iterdir()]:
        if path.suffix in (".json", ".md", ".jinja"):
            assert str(snapshot) not in path.read_text(), path

    # The box forgets the job (and its files): the copies stand on their own.
    assert box.delete(f"/v1/training_jobs/{job_id}").status_code == 204
    assert not (box.settings.data_dir / "jobs" / job_id).exists()
    laptop_hf = tmp_path / "laptop" / "hf"
    shutil.copytree(
        Path(os.environ["HF_HUB_CACHE"]) / f"models--{HUB_ID.replace('/', '--')}",
        laptop_hf / "hub" / f"models--{HUB_ID.replace('/', '--')}",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(laptop_hf), HF_HUB_OFFLINE="1")
    done = subprocess.run(
        [sys.executable, "-c", ELSEWHERE, str(adapter), str(merged)],
        env=env,
        cwd=tmp_path / "laptop",
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {
        "base_id": HUB_ID,
        "merged_matches_adapter": True,
        "auto_matches_adapter": True,
        "lora_changed_the_model": True,
        "new_tokens": result["new_tokens"],
        "peft_layers_in_merged": 0,
    }
    assert result["new_tokens"] > 0


def test_merge_refusals_are_4xx_with_clear_codes(box, tiny_model):
    # Nothing needs to train: what a job is decides before whether it has finished.
    full = lora_job(box, str(tiny_model), lora_rank=None, lora_alpha=None)
    r = box.post(f"/v1/training_jobs/{full}/merge")
    assert (r.status_code, r.json()["error"]["code"]) == (400, "not_a_lora_job")
    assert "already whole" in r.json()["error"]["message"]
    files = {"file": ("squares.zip", demo.squares_zip(), "application/zip")}
    clips = box.post("/v1/datasets", data={"name": "squares"}, files=files).json()["id"]
    video = box.job(
        method="sft_video_gen", base_model=demo.TINY_VIDEO, dataset_id=clips, hyperparameters=demo.VIDEO_HYPERPARAMETERS
    )["id"]
    r = box.post(f"/v1/training_jobs/{video}/merge")
    assert (r.status_code, r.json()["error"]["code"]) == (400, "merge_not_supported")
    assert "load_lora_weights" in r.json()["error"]["message"]
    lora = lora_job(box, str(tiny_model))
    r = box.post(f"/v1/training_jobs/{lora}/merge")
    assert (r.status_code, r.json()["error"]["code"]) == (409, "job_not_completed")
    assert box.post("/v1/training_jobs/job_nope/merge").status_code == 404
    assert box.get(f"/v1/training_jobs/{lora}/merge").json()["status"] == "not_merged"
    assert [e["event_type"] for e in box.store.list_events(lora, 100)] == ["created"]  # no half-started merge

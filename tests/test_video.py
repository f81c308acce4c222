"""sft_video_gen end to end: a zip of tiny synthetic clips uploaded and checked, a real CogVideoX
LoRA trained by `trainers.video` on the tiny offline pipeline on the cpu pool, validation videos
served as mp4, and a downloaded LoRA that loads into the pipeline and changes what it makes."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import Api, finished, run_until

from trainers.clips import read_clip, sample_indices
from trainers.contract import DatasetConfig, Devices, JobConfig, write_config
from trainers.tiny_video import squares_zip
from trainers.video import epoch_steps, plan

REPO = Path(__file__).resolve().parents[1]
PROMPT = "a red square moving right"
# 4 clips, batch 1: 4 steps per epoch. alpha != rank, so a reload that forgot alpha would show.
LEARNS = {
    "num_frames": 9,
    "height": 32,
    "width": 32,
    "lora_rank": 4,
    "lora_alpha": 16,
    "learning_rate": 2e-3,
    "num_epochs": 3,
    "validation_prompts": [PROMPT],
    "validation_steps": 6,
    "save_steps": 6,
    "seed": 0,
}


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory) -> Path:
    from trainers.tiny_video import build_tiny_video_pipeline

    return build_tiny_video_pipeline(tmp_path_factory.mktemp("tiny_video") / "pipeline", seed=0)


def upload_clips(api: Api, **kw) -> dict:
    r = api.upload_dataset(squares_zip(**kw), filename="clips.zip", name="squares")
    assert r.status_code == 200, r.text
    return r.json()


def video_job(api: Api, model: Path, dataset_id: str, **hp) -> dict:
    body = {
        "method": "sft_video_gen",
        "base_model": str(model),
        "dataset_id": dataset_id,
        "output_name": "squares",
        "gpu": {"type": "cpu", "count": 1},
        "hyperparameters": {**LEARNS, **hp},
    }
    return api.post("/v1/training_jobs", json=body)


def generate(pipe, seed: int = 0) -> np.ndarray:
    import torch

    return pipe(
        PROMPT,
        num_frames=9,
        height=32,
        width=32,
        num_inference_steps=4,
        max_sequence_length=pipe.transformer.config.max_text_seq_length,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
    ).frames[0]


# ---- upload --------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["metadata", "diffusers"])
def test_upload_reports_clips_with_frames_and_size(box, tmp_path, layout):
    dataset = upload_clips(box, n=3, frames=12, layout=layout)
    assert (dataset["format"], dataset["num_rows"]) == ("video_captions", 3)
    rows = box.get(f"/v1/datasets/{dataset['id']}/rows?limit=10").json()["data"]
    assert [(r["video"], r["caption"]) for r in rows] == [
        ("videos/clip0.mp4", "a red square moving right"),
        ("videos/clip1.mp4", "a green square moving left"),
        ("videos/clip2.mp4", "a blue square moving right"),
    ]
    assert {(r["frames"], r["width"], r["height"]) for r in rows} == {(12, 48, 48)}


def bad_zip(case: str) -> bytes:
    if case == "no_metadata":  # the clips alone, no captions
        good = zipfile.ZipFile(io.BytesIO(squares_zip(n=2)))
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as archive:
            for name in good.namelist():
                if name != "metadata.jsonl":
                    archive.writestr(name, good.read(name))
        return buf.getvalue()
    bad = {
        "traversal": {"../../escape.mp4": b"x"},
        "undecodable": {"videos/clip1.mp4": b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 500},
        "frame_count": {"metadata.jsonl": b'{"video": "videos/clip0.mp4", "caption": "x", "num_frames": 49}\n'},
    }
    return squares_zip(n=2, extra=bad[case])


@pytest.mark.parametrize(
    "case, code, named",
    [
        ("traversal", "unsafe_zip", "../../escape.mp4"),
        ("no_metadata", "missing_metadata", "metadata.jsonl"),
        ("undecodable", "invalid_video", "videos/clip1.mp4"),
        ("frame_count", "frame_count_mismatch", "videos/clip0.mp4"),
    ],
)
def test_bad_zips_are_400s_naming_the_problem_and_leave_nothing(box, tmp_path, case, code, named):
    r = box.upload_dataset(bad_zip(case), filename="clips.zip")
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == code and named in error["message"], error
    assert box.get("/v1/datasets").json()["data"] == []
    datasets_dir = box.settings.data_dir / "datasets"
    assert not datasets_dir.exists() or not any(datasets_dir.iterdir())


# ---- submit-time checks --------------------------------------------------------------------


def test_submit_checks_frames_against_the_model_rule_and_the_clips(box, tmp_path, tiny_pipeline):
    dataset = upload_clips(box, n=2, frames=12)["id"]
    r = video_job(box, tiny_pipeline, dataset, num_frames=10)
    assert r.status_code == 400 and r.json()["error"]["param"] == "hyperparameters.num_frames"
    assert "8k+1" in r.json()["error"]["message"]
    r = video_job(box, tiny_pipeline, dataset, num_frames=17)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "clip_too_short" and "12 frames" in error["message"] and "videos/clip" in error["message"]
    r = video_job(box, tiny_pipeline, dataset, height=40)
    assert r.status_code == 400 and r.json()["error"]["param"] == "hyperparameters.height"
    r = box.post(
        "/v1/training_jobs",
        json={
            "method": "sft_video_gen",
            "base_model": str(tiny_pipeline),
            "dataset_id": dataset,
            "output_name": "o",
            "gpu": {"type": "cpu"},
            "reward_function_id": "rf_1",
            "hyperparameters": {"num_frames": 9},
        },
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "reward_source_not_allowed"
    assert box.get("/v1/training_jobs").json()["data"] == []


# ---- training ------------------------------------------------------------------------------


def test_video_job_trains_validates_and_delivers_a_loadable_lora(box, tmp_path, tiny_pipeline):
    from diffusers import CogVideoXPipeline

    dataset = upload_clips(box, n=4, frames=12)["id"]
    r = video_job(box, tiny_pipeline, dataset)
    assert r.status_code == 200, r.text
    job = r.json()
    assert job["hyperparameters"]["lora_alpha"] == 16 and job["method"] == "sft_video_gen"
    job = finished(box, job["id"])
    log = box.get(f"/v1/training_jobs/{job['id']}/logs/full").text
    assert job["status"] == "completed", (job["error"], log[-3000:])
    assert (job["current_step"], job["total_steps"]) == (12, 12)

    metrics = box.get(f"/v1/training_jobs/{job['id']}/metrics").json()
    assert {"loss", "learning_rate", "grad_norm", "step_time"} <= set(metrics["available_keys"])
    losses = [m["values"]["loss"] for m in metrics["metrics"]]
    assert len(losses) == 12 and all(np.isfinite(losses)) and min(losses) > 0
    assert "encoded clip 4/4" in log

    samples = box.get(f"/v1/training_jobs/{job['id']}/samples").json()["data"]
    assert [(s["step"], s["prompt"]) for s in samples] == [(6, PROMPT), (12, PROMPT)]
    clip = box.client.get(samples[-1]["video_url"].removeprefix(box.settings.base_url))  # a signed link, no key
    assert clip.status_code == 200 and clip.headers["content-type"] == "video/mp4"
    with av.open(io.BytesIO(clip.content)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 9 and frames[0].shape == (32, 32, 3)

    checkpoints = box.get(f"/v1/training_jobs/{job['id']}/checkpoints").json()["data"]
    assert sorted(c["step"] for c in checkpoints) == [6, 12]

    model = box.get(f"/v1/training_jobs/{job['id']}/model").json()
    lora_dir = tmp_path / "lora"
    for f in model["files"]:
        (lora_dir / f["path"]).parent.mkdir(parents=True, exist_ok=True)
        (lora_dir / f["path"]).write_bytes(box.client.get(f["url"].removeprefix(box.settings.base_url)).content)
    # The model card, then the LoRA.
    assert [f["path"] for f in model["files"]] == ["README.md", "pytorch_lora_weights.safetensors"]

    pipe = CogVideoXPipeline.from_pretrained(tiny_pipeline)
    pipe.set_progress_bar_config(disable=True)
    before = generate(pipe)
    pipe.load_lora_weights(lora_dir)
    adapter = next(iter(pipe.transformer.peft_config.values()))
    assert (adapter.r, adapter.lora_alpha) == (4, 16)  # alpha survived through the adapter metadata
    after = generate(pipe)
    assert np.abs(after - before).max() > 1e-3  # the trained LoRA changes what the pipeline makes


def test_cancel_saves_a_checkpoint_and_stops(box, tmp_path, tiny_pipeline):
    dataset = upload_clips(box, n=2, frames=9)["id"]
    job = video_job(box, tiny_pipeline, dataset, num_epochs=100_000, validation_steps=None, save_steps=None).json()
    run_until(box, lambda: (box.store.get_job(job["id"])["current_step"] or 0) >= 3, timeout=120)
    assert box.post(f"/v1/training_jobs/{job['id']}/cancel").json()["status"] == "cancelled"
    run_until(box, lambda: not box.store.jobs_holding_devices(), timeout=30)
    checkpoints = box.get(f"/v1/training_jobs/{job['id']}/checkpoints").json()["data"]
    assert len(checkpoints) == 1 and checkpoints[0]["step"] >= 3
    assert [f["path"] for f in checkpoints[0]["files"]] == ["pytorch_lora_weights.safetensors", "training_state.pt"]


# ---- the trainer on its own: a CogVideoX-5b-shaped (rotary) model, and the cache -----------


def trainer_job(tmp_path: Path, model: Path, clips: int, **hp) -> Path:
    """A job dir with config.json as the runner writes it, for running trainers.video directly."""
    data = tmp_path / "data"
    zipfile.ZipFile(io.BytesIO(squares_zip(n=clips, frames=9))).extractall(data)
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    defaults = {"num_epochs": 1, "validation_steps": None, "save_steps": None, "max_steps": None}
    hyperparameters = {**LEARNS, **defaults, "batch_size": 1, "gradient_accumulation_steps": 1, **hp}
    config = JobConfig(
        job_id="job_video",
        method="sft_video_gen",
        trainer="trainers.video",
        base_model=str(model),
        output_name="squares",
        dataset=DatasetConfig(
            id="ds_video", format="video_captions", columns=["video", "caption"], num_rows=clips, path=str(data)
        ),
        reward_functions=[],
        environments=None,
        openreward=None,
        hyperparameters=hyperparameters,
        seed=hyperparameters["seed"],
        devices=Devices(type="cpu", count=1, indices=[0]),
        job_dir=str(job_dir),
        output_dir=str(job_dir / "output"),
        models_dir=str(tmp_path / "models"),
        checkpoints_dir=str(job_dir / "checkpoints"),
    )
    write_config(job_dir, config)
    return job_dir


def run_trainer(job_dir: Path, *launcher: str) -> tuple[list[dict], str]:
    """(progress records, stdout) of `[launcher] -m trainers.video JOB_DIR`, which must succeed."""
    done = subprocess.run(
        [*(launcher or [sys.executable]), "-m", "trainers.video", str(job_dir)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return [json.loads(line) for line in (job_dir / "progress.jsonl").read_text().splitlines()], done.stdout


def test_rotary_model_trains_and_a_rerun_reuses_the_encoded_clips(tmp_path):
    from trainers.tiny_video import build_tiny_video_pipeline

    model = build_tiny_video_pipeline(tmp_path / "rotary", seed=1, rotary=True)
    job_dir = trainer_job(tmp_path, model, clips=2, batch_size=2, validation_prompts=[])
    records, out = run_trainer(job_dir)
    assert "encoded clip 2/2" in out
    assert [r["step"] for r in records if r["type"] == "metrics"] == [1]
    # validation_prompts empty: the first caption is rendered, so every job shows what it makes
    assert [r["prompt"] for r in records if r["type"] == "sample"] == ["a red square moving right"]
    assert (job_dir / "output" / "pytorch_lora_weights.safetensors").is_file()
    _, out = run_trainer(job_dir)
    assert "encoded clip" not in out  # the second run read JOB_DIR/cache


def test_several_processes_train_data_parallel_and_only_rank_0_reports(tmp_path, tiny_pipeline):
    """What `accelerate launch` does with a job's GPUs, here with torchrun's two CPU processes."""
    job_dir = trainer_job(tmp_path, tiny_pipeline, clips=3, num_epochs=2, save_steps=2)
    launcher = (sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2")
    records, out = run_trainer(job_dir, *launcher)
    assert "2 x CPU" in out
    assert out.count("encoded clip") == 3  # the two processes shared the encoding
    assert sorted(p.name for p in (job_dir / "cache").iterdir()) == [f"clip-00000{i}.pt" for i in range(3)]
    # 3 clips over 2 processes: 2 steps per epoch, the 4th pass repeating a clip; one report each
    assert [r["step"] for r in records if r["type"] == "metrics"] == [1, 2, 3, 4]
    assert [r["total_steps"] for r in records if r.get("event") == "running"] == [4]
    assert [r["step"] for r in records if r["type"] == "checkpoint"] == [2, 4]
    assert [r["step"] for r in records if r["type"] == "sample"] == [4]
    assert (job_dir / "output" / "pytorch_lora_weights.safetensors").is_file()


# ---- pieces ----------------------------------------------------------------------------------


def test_frames_are_sampled_evenly_from_first_to_last():
    assert sample_indices(49, 49) == list(range(49))
    assert sample_indices(97, 49) == list(range(0, 97, 2))
    assert sample_indices(12, 9)[0] == 0 and sample_indices(12, 9)[-1] == 11
    assert sample_indices(5, 1) == [0]


def test_clips_are_resized_to_cover_then_centre_cropped(tmp_path):
    from trainers.clips import write_mp4

    frames = np.zeros((3, 40, 80, 3), np.uint8)
    frames[:, :, 20:60] = 255  # a white band in the middle half of a 2:1 frame
    video = read_clip(write_mp4(frames, tmp_path / "wide.mp4"), 3, 32, 32)
    assert tuple(video.shape) == (3, 3, 32, 32) and video.min() >= -1 and video.max() <= 1
    # 40x80 scaled to 32x64, the centre 32 columns kept: the band fills the crop but for codec blur at its edges
    assert video[0, :, :, 4:28].mean() > 0.9


def test_plan_counts_short_last_batches_accumulation_and_processes():
    hp = {"batch_size": 2, "gradient_accumulation_steps": 2, "num_epochs": 3, "max_steps": None}
    assert plan(5, hp) == (2, 6)  # 3 batches -> 2 optimizer steps per epoch
    assert plan(5, {**hp, "max_steps": 4}) == (2, 4)
    assert plan(5, hp, processes=2) == (1, 3)  # 4 batches a step over 2 processes


def test_every_process_gets_the_same_number_of_batches_and_every_clip_is_seen():
    import torch

    steps = epoch_steps(5, 2, accumulation=2, processes=2, generator=torch.Generator().manual_seed(0))
    assert len(steps) == 1 and len(steps[0]) == 4  # 3 batches filled up to 4
    assert sorted({clip for batch in steps[0] for clip in batch}) == [0, 1, 2, 3, 4]
    assert all(len(steps[0][rank::2]) == 2 for rank in range(2))
    steps = epoch_steps(1, 1, accumulation=1, processes=2, generator=torch.Generator().manual_seed(0))
    assert steps == [[[0], [0]]]


def test_the_gpu_path_bf16_and_checkpointed_still_trains_every_lora_weight(tiny_pipeline):
    """On a GPU the transformer is bf16 and checkpointed, the LoRA weights fp32. With the base
    frozen, a reentrant checkpoint would lose the LoRA gradients inside each block. Checked on the CPU."""
    import torch
    from diffusers import CogVideoXDPMScheduler, CogVideoXPipeline

    from trainers.tiny_video import SCHEDULER_CONFIG
    from trainers.video import add_lora, diffusion_loss

    pipe = CogVideoXPipeline.from_pretrained(tiny_pipeline, dtype=torch.bfloat16)
    hp = {"lora_rank": 4, "lora_alpha": 4, "height": 32, "width": 32}
    transformer = add_lora(pipe.transformer, hp, on_gpu=True)
    assert transformer.gradient_checkpointing
    for name, param in transformer.named_parameters():
        if "lora_B" in name:  # B starts at zero, which would leave A without a gradient
            param.data.normal_(0, 0.1)
    torch.manual_seed(0)
    latents, embeds = torch.randn(1, 3, 4, 4, 4, dtype=torch.bfloat16), torch.randn(1, 16, 32, dtype=torch.bfloat16)
    loss = diffusion_loss(pipe, CogVideoXDPMScheduler(**SCHEDULER_CONFIG), latents, embeds, hp)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    lora = {n: p.grad for n, p in transformer.named_parameters() if p.requires_grad}
    assert len(lora) == 16 and all(
        g is not None and g.dtype == torch.float32 and g.abs().sum() > 0 for g in lora.values()
    )
    assert {p.dtype for p in transformer.parameters() if not p.requires_grad} == {torch.bfloat16}

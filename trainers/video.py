"""LoRA fine-tuning of a CogVideoX text-to-video model, as `python -m trainers.video JOB_DIR`.

The recipe is diffusers' CogVideoX LoRA example (examples/cogvideo/train_cogvideox_lora.py) in
small: LoRA on the transformer's attention projections, v-prediction turned into an x0 estimate
and weighted by 1 / (1 - alpha_bar), AdamW with warm-up and a cosine schedule. Sizes (text
length, VAE compression, patch sizes, rotary or sinusoidal positions) come from the model's own
config, so CogVideoX-2b, -5b and 1.5 models all go through the same code.

config.json in; progress.jsonl (per-step metrics, validation videos as samples, checkpoints),
train.log, JOB_DIR/cache (encoded clips) and output/ (the LoRA) out.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from pathlib import Path
from typing import Any

from trainers import clips, model_card, models, trackers, video_data
from trainers.contract import JobConfig
from trainers.errors import TrainerError
from trainers.progress import Progress, log, run, stop_requested

TARGET_MODULES = ["to_q", "to_k", "to_v", "to_out.0"]
# The diffusers recipe's defaults for everything the API does not expose.
ADAM = dict(betas=(0.9, 0.95), weight_decay=1e-4, eps=1e-8)
MAX_GRAD_NORM = 1.0
WARMUP_FRACTION, MAX_WARMUP_STEPS = 0.1, 100
INFERENCE_STEPS = 50
GUIDANCE_SCALE = 6.0
FPS = 8  # CogVideoX generates 8 frames per second
LORA_FILE = "pytorch_lora_weights.safetensors"
STATE_FILE = "training_state.pt"  # beside the LoRA in a checkpoint: what a resume needs besides it


def main(job_dir: str) -> int:
    # With several GPUs (accelerate launch / torchrun) every rank trains; run() lets rank 0 alone report.
    return run(job_dir, train)


def plan(num_clips: int, hp: dict, processes: int = 1) -> tuple[int, int]:
    """(optimizer steps per epoch, total steps). Each step takes gradient_accumulation_steps
    batches on every process; an epoch's last step is filled up with its first batches."""
    batches = math.ceil(num_clips / hp["batch_size"])
    per_epoch = math.ceil(batches / (hp["gradient_accumulation_steps"] * processes))
    return per_epoch, hp["max_steps"] or per_epoch * hp["num_epochs"]


def train(config: JobConfig, progress: Progress) -> int:
    progress = trackers.attach(config, progress)  # TensorBoard, and W&B when set
    import torch
    from accelerate import Accelerator

    hp = config.hyperparameters
    job_dir = Path(config.job_dir)
    torch.manual_seed(hp["seed"])
    on_gpu = config.devices.type != "cpu" and torch.cuda.is_available()
    accelerator = Accelerator(cpu=not on_gpu)  # data-parallel when launched as several processes
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    main_process = accelerator.is_main_process
    say = log if main_process else (lambda message: None)
    dtype = torch.bfloat16 if on_gpu and torch.cuda.is_bf16_supported() else torch.float32

    rows = video_data.read_rows(config.dataset)
    per_epoch, total = plan(len(rows), hp, world)
    pipe = load_pipeline(models.resolve(config.base_model, config.models_dir), config.base_model, hp, dtype, device)
    say(
        f"{len(rows)} clips, {per_epoch} steps per epoch, {total} steps; {world} x {'GPU' if on_gpu else 'CPU'} "
        f"{dtype}; {hp['num_frames']} frames at {hp['height']}x{hp['width']}"
    )
    progress.started(total_steps=total, clips=len(rows))

    # Each process encodes its share of the clips; all of them train on all of them.
    cached = video_data.cache(pipe, rows, hp, job_dir / "cache", device, shard=(rank, world))
    accelerator.wait_for_everyone()
    prompts = hp["validation_prompts"] or [rows[0].caption]
    validation = (
        prompts,
        video_data.encode_prompts(pipe, prompts, device),
        video_data.encode_prompts(pipe, [""] * len(prompts), device),  # the unconditional half of CFG
    )
    pipe.text_encoder = None  # every caption is encoded now; T5 is most of the model's memory
    if on_gpu:
        torch.cuda.empty_cache()

    transformer = add_lora(pipe.transformer, hp, on_gpu)
    model = accelerator.prepare_model(transformer) if world > 1 else transformer  # DDP syncs the LoRA grads
    params = [p for p in transformer.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=hp["learning_rate"], **ADAM)
    from diffusers import CogVideoXDPMScheduler
    from diffusers.optimization import get_scheduler

    warmup = min(MAX_WARMUP_STEPS, int(total * WARMUP_FRACTION))
    schedule = get_scheduler("cosine", optimizer, num_warmup_steps=warmup, num_training_steps=total)
    noise_scheduler = CogVideoXDPMScheduler.from_config(pipe.scheduler.config)
    say(f"LoRA rank {hp['lora_rank']} alpha {hp['lora_alpha']} on {', '.join(TARGET_MODULES)}: {_count(params)}")
    start = resume(config.resume_from, transformer, optimizer, schedule) if config.resume_from else 0
    if start:
        say(f"resumed from {config.resume_from} at step {start}")
    if start >= total:
        raise TrainerError(
            "invalid_hyperparameter",
            f"The checkpoint is at step {start}, this job has {total} steps in all; raise num_epochs or max_steps.",
        )

    def everyone(value: float, how: str) -> float:
        """value reduced over the processes ("mean" or "max"); itself with one process."""
        if world == 1:
            return value
        return accelerator.reduce(torch.tensor(value, device=device), reduction=how).item()

    def on_main(action: Any, *args: Any) -> None:
        if main_process:
            action(*args)
        accelerator.wait_for_everyone()

    step, last_validated = start, start
    accumulation = hp["gradient_accumulation_steps"]
    generator = torch.Generator().manual_seed(hp["seed"])  # the same order on every process
    for epoch in range(hp["num_epochs"] if not hp["max_steps"] else sys.maxsize):
        groups = epoch_steps(len(cached), hp["batch_size"], accumulation, world, generator)
        # A resumed run replays the epochs' orders up to its checkpoint, so it trains on the
        # batches the interrupted run had yet to see, in the same order.
        done = min(max(start - epoch * per_epoch, 0), len(groups))
        for group in groups[done:]:
            started = time.monotonic()
            lr = schedule.get_last_lr()[0]
            loss = 0.0
            for i, batch in enumerate(group[rank::world]):
                latents, embeds = video_data.load_batch(
                    [cached[j] for j in batch], pipe.vae.config.scaling_factor, device, dtype
                )
                last = i == accumulation - 1
                with contextlib.nullcontext() if last or world == 1 else accelerator.no_sync(model):
                    micro = diffusion_loss(pipe, noise_scheduler, latents, embeds, hp, model) / accumulation
                    micro.backward()
                loss += micro.item()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM).item()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            loss = everyone(loss, "mean")
            values = {"loss": loss, "learning_rate": lr, "grad_norm": grad_norm, "epoch": epoch + 1}
            values["step_time"] = time.monotonic() - started
            # Clips of every process's batches this step, per second (the video throughput shown).
            values["throughput/clips_per_s"] = sum(len(b) for b in group) / max(values["step_time"], 1e-9)
            progress.metrics(step, values)
            say(f"step {step}/{total}: loss {loss:.4g}, grad_norm {grad_norm:.3g}, lr {lr:.3g}")
            if hp["save_steps"] and step % hp["save_steps"] == 0:
                on_main(save_checkpoint, transformer, optimizer, schedule, job_dir, step, progress)
            if hp["validation_steps"] and step % hp["validation_steps"] == 0 and step < total:
                on_main(validate, pipe, validation, hp, step, job_dir, progress, device)
                last_validated = step
            if everyone(float(stop_requested()), "max"):  # every process stops at the same step
                on_main(save_checkpoint, transformer, optimizer, schedule, job_dir, step, progress)
                say(f"stopped on SIGTERM at step {step}")
                raise TrainerError("interrupted", f"The trainer was stopped (SIGTERM) at step {step}.")
            if step >= total:
                break
        if step >= total:
            break

    if last_validated != step:
        on_main(validate, pipe, validation, hp, step, job_dir, progress, device)
    output = Path(config.output_dir)
    on_main(save_lora, transformer, output)
    on_main(model_card.finish, output, config, "video_lora")  # the card beside the LoRA
    say(f"saved the LoRA to {output}; load it with CogVideoXPipeline.load_lora_weights")
    progress.completed(steps=step)
    return 0


def epoch_steps(clips: int, batch_size: int, accumulation: int, processes: int, generator: Any) -> list[list]:
    """One epoch in a fresh order: per optimizer step, accumulation x processes batches of clip
    indices (process r takes every processes-th batch from r). The last step is filled up with
    the epoch's first batches, so every process runs the same number of passes (DDP needs it)."""
    import torch

    order = torch.randperm(clips, generator=generator).tolist()
    batches = [order[i : i + batch_size] for i in range(0, clips, batch_size)]
    per_step = accumulation * processes
    batches += [batches[i % len(batches)] for i in range(-len(batches) % per_step)]
    return [batches[i : i + per_step] for i in range(0, len(batches), per_step)]


def load_pipeline(path: str, base_model: str, hp: dict, dtype: Any, device: Any) -> Any:
    from diffusers import CogVideoXPipeline

    if not (Path(path) / "model_index.json").is_file():
        raise TrainerError(
            "model_not_found",
            f"{base_model} ({path}) is not a diffusers pipeline (no model_index.json); sft_video_gen trains "
            "CogVideoX pipelines such as THUDM/CogVideoX-2b.",
        )
    try:
        pipe = CogVideoXPipeline.from_pretrained(path, dtype=dtype)
    except (OSError, ValueError, TypeError) as err:
        raise TrainerError("model_not_found", f"Could not load a CogVideoX pipeline from {path}: {err}") from None
    spatial = pipe.vae_scale_factor_spatial * pipe.transformer.config.patch_size
    if hp["height"] % spatial or hp["width"] % spatial:
        raise TrainerError(
            "invalid_hyperparameter",
            f"height and width must be multiples of {spatial} for {base_model} (VAE x{pipe.vae_scale_factor_spatial}, "
            f"patch {pipe.transformer.config.patch_size}); got {hp['height']}x{hp['width']}.",
        )
    if (hp["num_frames"] - 1) % pipe.vae_scale_factor_temporal:
        raise TrainerError(
            "invalid_hyperparameter",
            f"num_frames must be {pipe.vae_scale_factor_temporal}k+1 for {base_model}; got {hp['num_frames']}.",
        )
    pipe.vae.requires_grad_(False)
    pipe.text_encoder.requires_grad_(False)
    if device.type == "cuda":
        pipe.vae.enable_slicing()  # encode and decode 49 frames at 480x720 without a memory spike
        pipe.vae.enable_tiling()
    pipe.set_progress_bar_config(disable=True)  # the log gets one line per validation video instead
    return pipe.to(device)


def add_lora(transformer: Any, hp: dict, on_gpu: bool) -> Any:
    from peft import LoraConfig

    transformer.requires_grad_(False)
    transformer.add_adapter(
        LoraConfig(
            r=hp["lora_rank"], lora_alpha=hp["lora_alpha"], init_lora_weights=True, target_modules=TARGET_MODULES
        )
    )
    if on_gpu:
        transformer.enable_gradient_checkpointing()
    for param in transformer.parameters():
        if param.requires_grad:  # only the LoRA weights; kept in fp32 under a bf16 model
            param.data = param.data.float()
    transformer.train()
    return transformer


def diffusion_loss(pipe: Any, noise_scheduler: Any, latents: Any, embeds: Any, hp: dict, model: Any = None) -> Any:
    """The recipe's loss: noise the clean latents at a random timestep, turn the model's
    v-prediction into an x0 estimate, and weight its squared error by 1 / (1 - alpha_bar_t).
    `model` is the transformer as trained (wrapped for DDP with several processes)."""
    import torch

    transformer = pipe.transformer
    p_t = transformer.config.patch_size_t
    if p_t and latents.shape[1] % p_t:  # CogVideoX 1.5 packs frames in pairs: repeat the first to fill
        pad = p_t - latents.shape[1] % p_t
        latents = torch.cat([latents[:, :1].repeat(1, pad, 1, 1, 1), latents], dim=1)
    batch = latents.shape[0]
    noise = torch.randn_like(latents)
    timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (batch,), device=latents.device)
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    rotary = None
    if transformer.config.use_rotary_positional_embeddings:
        rotary = pipe._prepare_rotary_positional_embeddings(hp["height"], hp["width"], latents.shape[1], latents.device)
    ofs = latents.new_full((1,), 2.0) if transformer.config.ofs_embed_dim else None
    output = (model or transformer)(
        hidden_states=noisy,
        encoder_hidden_states=embeds,
        timestep=timesteps,
        ofs=ofs,
        image_rotary_emb=rotary,
        return_dict=False,
    )[0]
    predicted = noise_scheduler.get_velocity(output, noisy, timesteps)
    alphas = noise_scheduler.alphas_cumprod.to(latents.device, torch.float32)[timesteps]  # stored as float64
    weights = (1 / (1 - alphas)).reshape(batch, 1, 1, 1, 1)
    return (weights * (predicted.float() - latents.float()) ** 2).reshape(batch, -1).mean(dim=1).mean()


def validate(pipe: Any, validation: tuple, hp: dict, step: int, job_dir: Path, progress: Progress, device: Any) -> None:
    """One mp4 per validation prompt, from a fixed seed so videos of different steps compare."""
    import numpy as np
    import torch

    prompts, embeds, negative = validation
    pipe.transformer.eval()
    generator = torch.Generator(device=device).manual_seed(hp["seed"])
    for k, prompt in enumerate(prompts):
        started = time.monotonic()
        frames = pipe(
            prompt_embeds=embeds[k : k + 1],
            negative_prompt_embeds=negative[k : k + 1],
            num_frames=hp["num_frames"],
            height=hp["height"],
            width=hp["width"],
            num_inference_steps=INFERENCE_STEPS,
            guidance_scale=GUIDANCE_SCALE,
            max_sequence_length=pipe.transformer.config.max_text_seq_length,
            generator=generator,
            output_type="np",
        ).frames[0]
        path = job_dir / "samples" / f"step-{step:06d}-{k}.mp4"
        clips.write_mp4((np.clip(frames, 0, 1) * 255).round().astype(np.uint8), path, FPS)
        progress.sample(step, prompt=prompt, video=path)
        log(f"validation video {k + 1}/{len(prompts)} at step {step} in {time.monotonic() - started:.1f}s: {path.name}")
    pipe.transformer.train()


def save_lora(transformer: Any, path: Path) -> None:
    """pytorch_lora_weights.safetensors with the adapter config in its metadata, so
    `load_lora_weights` restores lora_alpha, not only the rank."""
    from diffusers import CogVideoXPipeline
    from peft.utils import get_peft_model_state_dict

    config = transformer.peft_config["default"].to_dict()
    config["target_modules"] = sorted(config["target_modules"])  # a set does not serialise to JSON
    CogVideoXPipeline.save_lora_weights(
        str(path),
        transformer_lora_layers=get_peft_model_state_dict(transformer),
        transformer_lora_adapter_metadata=config,
    )


def save_checkpoint(
    transformer: Any, optimizer: Any, schedule: Any, job_dir: Path, step: int, progress: Progress
) -> None:
    """The LoRA as the final model has it (it loads into a pipeline as it is) and, beside it,
    the optimizer, learning-rate schedule, step and random state a resumed job continues from."""
    import torch

    path = job_dir / "checkpoints" / f"checkpoint-{step}"
    save_lora(transformer, path)
    state = {
        "step": step,
        "optimizer": optimizer.state_dict(),
        "scheduler": schedule.state_dict(),
        "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }
    torch.save(state, path / STATE_FILE)
    progress.checkpoint(step, path)
    log(f"checkpoint saved: {path}")


def resume(path: str, transformer: Any, optimizer: Any, schedule: Any) -> int:
    """Load a checkpoint of save_checkpoint into the LoRA, optimizer and schedule, restore the
    random state; returns its step. The server checked that its LoRA has this job's shape."""
    import torch
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    folder = Path(path)
    if not (folder / STATE_FILE).is_file():
        raise TrainerError(
            "checkpoint_not_found",
            f"{folder.name} has no {STATE_FILE} (saved before resumable video checkpoints); resume from a newer one.",
        )
    weights = {k.removeprefix("transformer."): v for k, v in load_file(folder / LORA_FILE).items()}
    loaded = set_peft_model_state_dict(transformer, weights)
    if loaded.unexpected_keys:
        raise TrainerError(
            "resume_incompatible",
            f"{folder.name}'s LoRA does not fit this model: {len(loaded.unexpected_keys)} weights have no place "
            f"in it (e.g. {loaded.unexpected_keys[0]}).",
        )
    state = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    if state["cuda_rng"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return int(state["step"])


def _count(params: list) -> str:
    return f"{sum(p.numel() for p in params):,} trainable parameters"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

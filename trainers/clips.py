"""Reading training clips and writing generated ones, with PyAV (FFmpeg).

Frames are decoded one at a time and only the ones the trainer samples are kept, so a long
high-resolution clip never sits in memory whole.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trainers.errors import TrainerError


def frame_count(path: Path) -> int:
    """Frames in the clip's first video stream, counted by demuxing (cheap: nothing is decoded)."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return sum(1 for packet in container.demux(stream) if packet.size)


def sample_indices(available: int, wanted: int) -> list[int]:
    """`wanted` frame indices spread evenly from the first frame to the last."""
    if wanted == 1:
        return [0]
    return [round(i * (available - 1) / (wanted - 1)) for i in range(wanted)]


def read_clip(path: Path, num_frames: int, height: int, width: int) -> Any:
    """`num_frames` frames sampled evenly, resized to cover height x width and centre-cropped, as a
    float tensor [frames, 3, height, width] in [-1, 1] (what the CogVideoX VAE encodes)."""
    import av
    import numpy as np
    import torch

    available = frame_count(path)
    if available < num_frames:
        raise TrainerError(
            "dataset_format_incompatible",
            f"Clip {path.name} has {available} frames; num_frames is {num_frames}. "
            "Lower num_frames or remove the clip.",
        )
    wanted = sample_indices(available, num_frames)
    kept: list[Any] = []
    with av.open(str(path)) as container:
        container.streams.video[0].thread_type = "AUTO"  # FFmpeg decodes on all cores
        for index, frame in enumerate(container.decode(video=0)):
            while len(kept) < num_frames and wanted[len(kept)] == index:  # an index may repeat
                kept.append(frame.to_ndarray(format="rgb24"))
            if len(kept) == num_frames:
                break
    if len(kept) < num_frames:
        raise TrainerError("dataset_format_incompatible", f"Clip {path.name} ended early: it has undecodable frames.")
    video = torch.from_numpy(np.stack(kept)).permute(0, 3, 1, 2)  # F, 3, h, w; uint8
    return _cover_and_crop(video, height, width).div_(127.5).sub_(1.0)


def _cover_and_crop(video: Any, height: int, width: int) -> Any:
    """Scale so the frame covers height x width (keeping its aspect ratio), then crop the centre;
    uint8 in, float [0, 255] out."""
    import math

    import torch.nn.functional as F

    h, w = video.shape[-2:]
    scale = max(height / h, width / w)
    size = (max(height, math.ceil(h * scale)), max(width, math.ceil(w * scale)))
    video = video.float()
    if size != (h, w):
        video = F.interpolate(video, size=size, mode="bilinear", antialias=True, align_corners=False).clamp_(0, 255)
    top, left = (size[0] - height) // 2, (size[1] - width) // 2
    return video[..., top : top + height, left : left + width].contiguous()


def write_mp4(frames: Any, path: Path, fps: int = 8) -> Path:
    """frames: uint8 array [F, H, W, 3] -> an H.264 mp4 that browsers play (yuv420p)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = frames.shape[1:3]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        for array in frames:
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path

"""Tiny synthetic video datasets for the tests: a coloured square moving over a dark background."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np

from trainers.clips import write_mp4

COLOURS = {"red": (230, 40, 40), "green": (40, 200, 60), "blue": (50, 80, 230), "yellow": (230, 210, 40)}


def square_clip(path: Path, colour: str = "red", frames: int = 12, size: int = 48, direction: int = 1) -> Path:
    video = np.full((frames, size, size, 3), 20, np.uint8)
    side = size // 3
    for i in range(frames):
        x = (i * (size - side)) // max(frames - 1, 1)
        x = x if direction > 0 else size - side - x
        video[i, size // 3 : size // 3 + side, x : x + side] = COLOURS[colour]
    return write_mp4(video, path)


def captioned_zip(
    tmp: Path, n: int = 4, frames: int = 12, extra: dict[str, bytes] | None = None, layout: str = "metadata"
) -> bytes:
    """A zip of n clips with captions, in the metadata.jsonl or the diffusers (prompts.txt) layout."""
    buf = io.BytesIO()
    colours = list(COLOURS)
    with zipfile.ZipFile(buf, "w") as archive:
        rows = []
        for i in range(n):
            colour, direction = colours[i % len(colours)], 1 if i % 2 == 0 else -1
            clip = square_clip(tmp / f"clip{i}.mp4", colour, frames, direction=direction)
            archive.write(clip, f"videos/clip{i}.mp4")
            side = "right" if direction > 0 else "left"
            rows.append({"video": f"videos/clip{i}.mp4", "caption": f"a {colour} square moving {side}"})
        if layout == "metadata":
            archive.writestr("metadata.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        else:
            archive.writestr("prompts.txt", "".join(r["caption"] + "\n" for r in rows))
            archive.writestr("videos.txt", "".join(r["video"] + "\n" for r in rows))
        for name, data in (extra or {}).items():
            archive.writestr(name, data)
    return buf.getvalue()

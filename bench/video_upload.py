"""How long a video dataset takes to check on upload (every frame of every clip is decoded) and
to prepare for training (trainers.clips.read_clip: decode, sample, resize, crop), on this machine.

    .venv/bin/python bench/video_upload.py [--clips 20] [--frames 49] [--size 720x480]

Clips are H.264 mp4s of a moving square (made with trainers.tiny_video.square_clip's encoder) at
the given size. Prints a table and one `JSON {...}` line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_clip(path: Path, frames: int, width: int, height: int) -> Path:
    import numpy as np

    from trainers.clips import write_mp4

    rng = np.random.default_rng(0)
    video = np.empty((frames, height, width, 3), np.uint8)
    base = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)  # texture, so frames are not trivial
    for i in range(frames):
        video[i] = np.roll(base, 4 * i, axis=1)
    return write_mp4(video, path, fps=8)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=20)
    parser.add_argument("--frames", type=int, default=49)
    parser.add_argument("--size", default="720x480", help="WIDTHxHEIGHT of the clips")
    args = parser.parse_args()
    width, height = map(int, args.size.split("x"))

    from trainers.clips import read_clip
    from veri_box.dataset_files import inspect_upload

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        clip = make_clip(tmp / "clip.mp4", args.frames, width, height)
        archive = tmp / "clips.zip"
        with zipfile.ZipFile(archive, "w") as zf:
            for i in range(args.clips):
                zf.write(clip, f"videos/{i}.mp4")
            zf.writestr(
                "metadata.jsonl", "".join(f'{{"video": "videos/{i}.mp4", "caption": "c"}}\n' for i in range(args.clips))
            )
        clip_bytes = clip.stat().st_size
        dest = tmp / "dest"
        dest.mkdir()
        started = time.monotonic()
        inspected = inspect_upload(archive, "clips.zip", dest)
        upload_s = time.monotonic() - started
        assert inspected.num_rows == args.clips

        reads = []
        for i in range(min(args.clips, 5)):
            t0 = time.monotonic()
            read_clip(dest / "videos" / "videos" / f"{i}.mp4", args.frames, 480, 720)
            reads.append(time.monotonic() - t0)

    result = {
        "clips": args.clips,
        "frames": args.frames,
        "size": f"{width}x{height}",
        "clip_bytes": clip_bytes,
        "upload_check_s": round(upload_s, 2),
        "upload_check_s_per_clip": round(upload_s / args.clips, 3),
        "prepare_read_clip_s_median": round(statistics.median(reads), 3),
    }
    for key, value in result.items():
        print(f"{key:>28}  {value}")
    print("JSON " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Video datasets: a zip of clips with captions (metadata.jsonl, or diffusers' prompts.txt and
videos.txt), unpacked safely and decoded clip by clip on upload, so a clip that would fail a
training job hours in fails the upload now. PyAV is imported only when a clip is probed.
"""

from __future__ import annotations

import json
import re
import stat
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from itertools import zip_longest
from pathlib import Path, PurePosixPath
from typing import IO, Any

from .dataset_files import BOM, VIDEO_EXTENSIONS, DatasetError, Inspected, Limits, _json_lines, _too_many_rows

# macOS Finder adds these to every zip it makes; they are never part of the dataset.
ZIP_JUNK = ("__MACOSX", ".DS_Store")


def inspect_zip(src: Path, dest_dir: Path, limits: Limits) -> Inspected:
    try:
        with zipfile.ZipFile(src) as archive:
            files = _safe_members(archive, limits)
            videos_dir = dest_dir / "videos"
            videos_dir.mkdir()
            _check_unpacked(files, CAPTION_FILES, limits)  # before they are read into memory
            rows = _caption_rows(archive, files)  # checked before anything is unpacked
            clips = {row["video"]: files[row["video"]] for row in rows}
            _check_unpacked(files, [*CAPTION_FILES, *clips], limits)
            _extract(archive, clips, videos_dir, limits)
            num_rows, columns = _write_metadata(rows, videos_dir, limits)
    except (zipfile.BadZipFile, NotImplementedError, zlib.error, EOFError) as e:
        raise DatasetError("invalid_zip", f"The zip cannot be read ({e}); create it again and re-upload.") from None
    return Inspected("video_captions", num_rows, columns, "videos")


def _unsafe(name: str, why: str) -> DatasetError:
    message = f'The zip entry "{name}" {why}; re-create the zip with plain relative paths and files.'
    return DatasetError("unsafe_zip", message)


def _safe_members(archive: zipfile.ZipFile, limits: Limits) -> dict[str, zipfile.ZipInfo]:
    """Every file in the zip under its safe relative path, or DatasetError if any entry is unsafe."""
    entries = archive.infolist()
    if len(entries) > limits.max_zip_files:
        message = f"The zip has {len(entries):,} entries; the most allowed is {limits.max_zip_files:,}."
        raise DatasetError("unsafe_zip", message)
    files: dict[PurePosixPath, zipfile.ZipInfo] = {}
    for info in entries:
        name = info.filename
        path = PurePosixPath(name)  # also drops "." parts and doubled slashes
        if "\\" in name or re.match(r"[A-Za-z]:", name):
            raise _unsafe(name, "uses a Windows drive or backslash path")
        if path.is_absolute():
            raise _unsafe(name, "has an absolute path")
        if ".." in path.parts:
            raise _unsafe(name, 'climbs out of its folder with ".."')
        if stat.S_ISLNK(info.external_attr >> 16):
            raise _unsafe(name, "is a symbolic link")
        if info.flag_bits & 0x1:
            raise _unsafe(name, "is encrypted")
        if not info.is_dir() and path.parts and not any(part in ZIP_JUNK for part in path.parts):
            files[path] = info
    # Zipping a folder wraps everything in it; the dataset root is then that folder.
    if len({path.parts[0] for path in files}) == 1 and all(len(path.parts) > 1 for path in files):
        files = {PurePosixPath(*path.parts[1:]): info for path, info in files.items()}
    folders = {parent for path in files for parent in path.parents}
    if clash := sorted(str(path) for path in folders.intersection(files)):
        raise DatasetError("invalid_zip", f'The zip holds "{clash[0]}" both as a file and as a folder; rename one.')
    return {path.as_posix(): info for path, info in files.items()}


def _caption_rows(archive: zipfile.ZipFile, files: dict[str, zipfile.ZipInfo]) -> list[dict]:
    """One {"video", "caption", ...} row per clip, whichever layout the zip used."""
    if "metadata.jsonl" in files:
        return list(_metadata_rows(archive, files))
    if "prompts.txt" in files and "videos.txt" in files:
        return list(_diffusers_rows(archive, files))
    raise DatasetError(
        "missing_metadata",
        'The zip has no captions. Put a metadata.jsonl at its top with one {"video": "videos/x.mp4", '
        '"caption": "..."} per line, or use the diffusers layout: prompts.txt and videos.txt with one '
        "caption and one video path per line, in the same order.",
    )


def _write_metadata(rows: list[dict], videos_dir: Path, limits: Limits) -> tuple[int, list[str]]:
    """Write the normalised metadata.jsonl, each row with its clip's decoded frame count and size."""
    num_rows, columns, probed = 0, {"video": None, "caption": None, **dict.fromkeys(VIDEO_FACTS)}, {}
    with open(videos_dir / "metadata.jsonl", "w", encoding="utf-8") as f:
        for row in rows:
            num_rows += 1
            if num_rows > limits.max_rows:
                raise _too_many_rows(limits)
            if row["video"] not in probed:
                probed[row["video"]] = probe_video(videos_dir / row["video"], row["video"])
            row = {**row, **probed[row["video"]]}
            _check_declared_frames(row)
            columns.update(dict.fromkeys(row))
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    if num_rows == 0:
        raise DatasetError("empty_dataset", "The zip's captions list no videos; add at least one row.")
    return num_rows, list(columns)


VIDEO_FACTS = ("frames", "width", "height", "fps")


def probe_video(path: Path, name: str) -> dict[str, Any]:
    """Decode every frame of a clip, so one that would fail the job hours in fails the upload now,
    and return its frame count, size and frame rate."""
    import av  # only video uploads pay for loading FFmpeg

    frames, width, height, fps = 0, None, None, None
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DatasetError("invalid_video", f'"{name}" has no video stream; upload an mp4 or webm clip.')
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            fps = round(float(stream.average_rate), 3) if stream.average_rate else None
            for frame in container.decode(stream):
                frames, width, height = frames + 1, frame.width, frame.height
    except av.FFmpegError as e:
        raise DatasetError(
            "invalid_video", f'"{name}" cannot be decoded ({e.strerror or e}); re-encode it (e.g. H.264 mp4).'
        ) from None
    if frames == 0:
        raise DatasetError("invalid_video", f'"{name}" has no decodable frames; re-encode it (e.g. H.264 mp4).')
    return {"frames": frames, "width": width, "height": height, "fps": fps}


def _check_declared_frames(row: dict) -> None:
    """A frame count in the metadata that the file contradicts means a truncated or wrong clip."""
    declared = row.get("num_frames")
    if declared is not None and declared != row["frames"]:
        raise DatasetError(
            "frame_count_mismatch",
            f'"{row["video"]}" is listed with num_frames {declared} but decodes to {row["frames"]} frames; '
            "fix the metadata or re-export the clip.",
        )


def shortest_clip(dest_dir: Path, stored_path: str) -> tuple[str, int] | None:
    """(video, frames) of the clip with the fewest frames in a stored video_captions dataset, or
    None if no row has a frame count (datasets uploaded before clips were decoded on upload)."""
    with open(Path(dest_dir) / stored_path / "metadata.jsonl", encoding="utf-8") as f:
        rows = [row for row in map(json.loads, filter(str.strip, f)) if isinstance(row.get("frames"), int)]
    row = min(rows, key=lambda r: r["frames"], default=None)
    return None if row is None else (row["video"], row["frames"])


def _metadata_rows(archive: zipfile.ZipFile, files: dict[str, zipfile.ZipInfo]) -> Iterator[dict]:
    with archive.open(files["metadata.jsonl"]) as f:
        for where, row in _json_lines(f, "metadata.jsonl line"):
            caption_key = "caption" if "caption" in row else "prompt"  # "prompt" is a synonym
            caption = row.get(caption_key)
            if not isinstance(caption, str) or not caption.strip():
                raise DatasetError("invalid_row", f'{where} has no "caption" text ("prompt" is accepted too).')
            video = _video_path(where, row.get("video"), files)
            extra = {key: value for key, value in row.items() if key not in ("video", caption_key)}
            yield {"video": video, "caption": caption, **extra}


def _diffusers_rows(archive: zipfile.ZipFile, files: dict[str, zipfile.ZipInfo]) -> Iterator[dict]:
    with archive.open(files["prompts.txt"]) as prompts, archive.open(files["videos.txt"]) as videos:
        pairs = zip_longest(_text_lines(prompts, "prompts.txt"), _text_lines(videos, "videos.txt"))
        for prompt, video in pairs:
            if prompt is None or video is None:
                longer, shorter = ("prompts.txt", "videos.txt") if video is None else ("videos.txt", "prompts.txt")
                raise DatasetError(
                    "invalid_row", f"{longer} has more non-empty lines than {shorter}; they must pair up line by line."
                )
            yield {"video": _video_path(video[0], video[1], files), "caption": prompt[1]}


def _text_lines(f: IO[bytes], name: str) -> Iterator[tuple[str, str]]:
    for n, raw in enumerate(f, 1):
        try:
            text = raw.removeprefix(BOM).decode("utf-8").strip()
        except UnicodeDecodeError:
            raise DatasetError("invalid_encoding", f"{name} line {n} is not valid UTF-8; save it as UTF-8.") from None
        if text:
            yield f"{name} line {n}", text


def _video_path(where: str, video: Any, files: dict[str, zipfile.ZipInfo]) -> str:
    if not isinstance(video, str) or not video.strip():
        raise DatasetError("invalid_row", f'{where} has no "video" path such as "videos/x.mp4".')
    path = PurePosixPath(video.strip()).as_posix()
    if not path.lower().endswith(VIDEO_EXTENSIONS):
        message = f'{where} names "{video}", which is not a video; use {", ".join(VIDEO_EXTENSIONS)}.'
        raise DatasetError("invalid_row", message)
    if path not in files:
        message = f'{where} names "{video}", which is not in the zip (paths start at the folder with the captions).'
        raise DatasetError("missing_video", message)
    return path


CAPTION_FILES = ("metadata.jsonl", "prompts.txt", "videos.txt")


def _check_unpacked(files: dict[str, zipfile.ZipInfo], names: Iterable[str], limits: Limits) -> None:
    """Only the captions and the clips they name are read or unpacked, so whatever else the zip
    holds (a forgotten folder, or a bomb of zeros) costs nothing; what is read is capped by its
    declared sizes, which zipfile never reads past."""
    declared = sum(files[name].file_size for name in set(names) if name in files)
    if declared > limits.max_unpacked_bytes:
        raise DatasetError(
            "unsafe_zip",
            f"The zip's captions and the clips they name unpack to {declared:,} bytes; the most this box "
            f"allows is {limits.max_unpacked_bytes:,} (4 x veri-box serve --max-upload-mb, at least 256 MiB).",
        )


def _extract(archive: zipfile.ZipFile, files: dict[str, zipfile.ZipInfo], videos_dir: Path, limits: Limits) -> None:
    """Copy entries out one by one, counting bytes, since headers can lie about sizes."""
    root, written = videos_dir.resolve(), 0
    for name, info in files.items():
        target = videos_dir / name
        if not target.resolve().is_relative_to(root):  # belt and braces over _safe_members
            raise _unsafe(name, "points outside the dataset")
        target.parent.mkdir(parents=True, exist_ok=True)
        with archive.open(info) as entry, open(target, "wb") as out:
            entry_bytes = 0
            while chunk := entry.read(1 << 20):
                entry_bytes += len(chunk)
                written += len(chunk)
                if entry_bytes > info.file_size or written > limits.max_unpacked_bytes:
                    raise _unsafe(name, "unpacks to more bytes than its header says")
                out.write(chunk)

"""Check an uploaded dataset file, store it, and read rows back for previews.

Three kinds of upload, told apart by content rather than by name: JSON Lines and Parquet
for the text methods, and a zip of videos with captions for `sft_video_gen`. Every row is
checked on upload so that a bad file fails here, with a line number a person can fix,
instead of minutes into a training job. Pure module: no web framework, no torch; pyarrow
is imported inside the functions that need it so importing this stays cheap.
"""

from __future__ import annotations

import json
import re
import shutil
import stat
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import zip_longest
from pathlib import Path, PurePosixPath
from typing import IO, Any

METHOD_FORMATS = {
    "grpo": {"prompt_only", "prompt_completion", "chatml", "sharegpt", "alpaca"},
    "sft_video_gen": {"video_captions"},
}
VIDEO_EXTENSIONS = (".mp4", ".mov", ".webm", ".mkv", ".avi", ".gif")
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".jsonlines", ".json")
ROLES = ("system", "user", "assistant", "tool")
ACCEPTED_SHAPES = (
    'Accepted row shapes: {"prompt"} (prompt_only), {"prompt", "completion"} (prompt_completion), '
    '{"messages": [{"role", "content"}, ...]} (chatml), {"conversations": [{"from", "value"}, ...]} '
    '(sharegpt), {"instruction", "input" (optional), "output"} (alpaca), {"text"} (text).'
)
ACCEPTED_FILES = (
    "Upload JSON Lines (.jsonl, one JSON object per line), Parquet (.parquet), or a .zip of videos with metadata.jsonl."
)
BOM = b"\xef\xbb\xbf"
# macOS Finder adds these to every zip it makes; they are never part of the dataset.
ZIP_JUNK = ("__MACOSX", ".DS_Store")


class DatasetError(Exception):
    def __init__(self, code: str, message: str, param: str | None = "file"):
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param


@dataclass(frozen=True)
class Limits:
    max_rows: int = 10_000_000
    max_zip_files: int = 100_000
    max_unpacked_bytes: int = 50 * 1024**3


@dataclass
class Inspected:
    format: str
    num_rows: int
    columns: list[str]
    stored_path: str


def compatible_methods(format: str) -> set[str]:
    return {method for method, formats in METHOD_FORMATS.items() if format in formats}


def inspect_upload(src: Path, filename: str, dest_dir: Path, limits: Limits = Limits()) -> Inspected:
    """Validate the upload at `src` and store it inside `dest_dir`; raise DatasetError if bad."""
    with open(src, "rb") as f:
        head = f.read(8192)
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):  # the second is an empty zip
        return _inspect_zip(Path(src), dest_dir, limits)
    if head[:4] == b"PAR1":
        return _inspect_parquet(Path(src), dest_dir, limits)
    if not head:
        raise DatasetError("empty_dataset", "The file is empty; upload a file with at least one row.")
    if head[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise DatasetError("invalid_encoding", "The file is UTF-16; save it as UTF-8 and upload it again.")
    # JSON text never holds a NUL byte, and JSON Lines start with "{" (or "[" for a wrong but
    # recognisable line); anything else, unless named as JSON Lines, is some other kind of file.
    first = head.removeprefix(BOM).lstrip()[:1]
    looks_like_jsonl = first in (b"", b"{", b"[") or Path(filename).suffix.lower() in JSONL_SUFFIXES
    if b"\x00" in head or not looks_like_jsonl:
        message = f'"{filename}" is not a dataset file this box reads. {ACCEPTED_FILES}'
        raise DatasetError("unsupported_file_type", message)
    return _inspect_jsonl(Path(src), dest_dir, limits)


def preview_rows(dest_dir: Path, inspected_format: str, stored_path: str, offset: int, limit: int) -> list[dict]:
    """Rows offset..offset+limit of a stored dataset, reading no more of it than needed."""
    offset, limit = max(0, offset), max(0, limit)
    path = Path(dest_dir) / stored_path
    if inspected_format == "video_captions":
        rows = _jsonl_slice(path / "metadata.jsonl", offset, limit)
        for row in rows:
            video = path / row["video"]
            row["bytes"] = video.stat().st_size if video.is_file() else None
        return rows
    if path.suffix == ".parquet":
        return _parquet_slice(path, offset, limit)
    return _jsonl_slice(path, offset, limit)


# ---- row shapes -------------------------------------------------------------------------
# Each check returns None when the row fits, or what is wrong, phrased to follow "Line 7 ".


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    names = {str: "a string", list: "a JSON array", dict: "a JSON object"}
    return names.get(type(value), f"a {type(value).__name__}")


def _string_problem(row: dict, key: str, non_empty: bool = False) -> str | None:
    if key not in row:
        return f'has no "{key}" field'
    if not isinstance(row[key], str):
        return f'has "{key}" as {_kind(row[key])}, not a string'
    if non_empty and not row[key].strip():
        return f'has an empty "{key}"'
    return None


def _messages_problem(row: dict, key: str, speaker: str, text: str, roles: tuple[str, ...] = ()) -> str | None:
    if key not in row:
        return f'has no "{key}" field'
    messages = row[key]
    if not isinstance(messages, list):
        return f'has "{key}" as {_kind(messages)}, not a list of {{"{speaker}", "{text}"}} messages'
    if not messages:
        return f'has an empty "{key}" list'
    for i, message in enumerate(messages, 1):
        if not isinstance(message, dict):
            return f'has "{key}" item {i} as {_kind(message)}, not a {{"{speaker}", "{text}"}} object'
        if not isinstance(message.get(speaker), str):
            return f'has "{key}" item {i} without a "{speaker}" string'
        if roles and message[speaker] not in roles:
            return f'has "{key}" item {i} with role "{message[speaker]}"; roles must be one of {", ".join(roles)}'
        if not isinstance(message.get(text), str):
            return f'has "{key}" item {i} without a "{text}" string'
    return None


def _prompt_problem(row: dict, key: str, non_empty: bool = True) -> str | None:
    """A prompt (or completion) is plain text or, in TRL's conversational form, chat messages."""
    value = row.get(key)
    if isinstance(value, list):
        return _messages_problem(row, key, "role", "content", ROLES)
    if key in row and not isinstance(value, str):
        return f'has "{key}" as {_kind(value)}, not a string or a list of chat messages'
    return _string_problem(row, key, non_empty)


def _prompt_only(row: dict) -> str | None:
    # A null completion counts as absent: Parquet gives every row every column.
    if row.get("completion") is not None:
        return 'has a "completion" field'
    return _prompt_problem(row, "prompt")


def _alpaca(row: dict) -> str | None:
    problem = _string_problem(row, "instruction") or _string_problem(row, "output")
    if problem is None and row.get("input") is not None and not isinstance(row["input"], str):
        problem = f'has "input" as {_kind(row["input"])}, not a string'
    return problem


# Detection order, most specific first; the key marks what a row was probably meant to be.
FORMATS: dict[str, tuple[str, Callable[[dict], str | None]]] = {
    "chatml": ("messages", lambda row: _messages_problem(row, "messages", "role", "content", ROLES)),
    "sharegpt": ("conversations", lambda row: _messages_problem(row, "conversations", "from", "value")),
    "alpaca": ("instruction", _alpaca),
    "prompt_completion": (
        "completion",
        lambda row: _prompt_problem(row, "prompt") or _prompt_problem(row, "completion", non_empty=False),
    ),
    "prompt_only": ("prompt", _prompt_only),
    "text": ("text", lambda row: _string_problem(row, "text")),
}


def _detect_format(where: str, row: dict) -> str:
    for name, (_, problem) in FORMATS.items():
        if problem(row) is None:
            return name
    for name, (key, problem) in FORMATS.items():
        if key in row:
            message = f"{where} looks like {name} data but {problem(row)}."
            raise DatasetError("unknown_format", f"{message} {ACCEPTED_SHAPES}")
    keys = ", ".join(f'"{key}"' for key in list(row)[:10]) or "none"
    message = f"{where} matches no accepted row shape (its fields: {keys})."
    raise DatasetError("unknown_format", f"{message} {ACCEPTED_SHAPES}")


def _check_rows(rows: Iterable[tuple[str, dict]], limits: Limits) -> tuple[str, int, list[str]]:
    """Detect the format from the first row and hold every other row to it."""
    format, num_rows, columns = None, 0, {}
    for where, row in rows:
        num_rows += 1
        if num_rows > limits.max_rows:
            raise _too_many_rows(limits)
        if format is None:
            format = _detect_format(where, row)
        elif (problem := FORMATS[format][1](row)) is not None:
            raise DatasetError("inconsistent_rows", f"{where} {problem}; the first row made this a {format} dataset.")
        for key in row:
            columns.setdefault(key, None)
    if format is None:
        raise DatasetError("empty_dataset", "The file has no rows, only blank lines; add at least one row.")
    return format, num_rows, list(columns)


def _too_many_rows(limits: Limits) -> DatasetError:
    return DatasetError(
        "too_many_rows", f"The dataset has more than {limits.max_rows:,} rows, the most one dataset may have; split it."
    )


# ---- JSON Lines -------------------------------------------------------------------------


def _json_lines(f: IO[bytes], label: str = "Line") -> Iterator[tuple[str, dict]]:
    """Yield ("Line n", object) for each non-blank line; blank lines still count for n."""
    for n, raw in enumerate(f, 1):
        where = f"{label} {n}"
        if n == 1:
            raw = raw.removeprefix(BOM)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            bad = f"byte 0x{raw[e.start]:02x} at position {e.start + 1}"
            message = f"{where} is not valid UTF-8 ({bad}); save the file as UTF-8."
            raise DatasetError("invalid_encoding", message) from None
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as e:
            message = f"{where} is not valid JSON: {e.msg} (column {e.colno})."
            if text.strip() in ("[", "{"):
                message += " Each line must hold one whole JSON object, not a pretty-printed document."
            raise DatasetError("invalid_json", message) from None
        except (ValueError, RecursionError) as e:  # e.g. huge integers, absurd nesting
            raise DatasetError("invalid_json", f"{where} is not valid JSON: {e}.") from None
        if not isinstance(row, dict):
            raise DatasetError("invalid_row", f"{where} is {_kind(row)}, but every line must be a JSON object.")
        yield where, row


def _inspect_jsonl(src: Path, dest_dir: Path, limits: Limits) -> Inspected:
    with open(src, "rb") as f:
        format, num_rows, columns = _check_rows(_json_lines(f), limits)
    shutil.copyfile(src, dest_dir / "data.jsonl")
    return Inspected(format, num_rows, columns, "data.jsonl")


def _jsonl_slice(path: Path, offset: int, limit: int) -> list[dict]:
    rows: list[dict] = []
    index = 0
    with open(path, "rb") as f:
        for raw in f:
            if len(rows) >= limit:
                break
            if not raw.strip():
                continue
            if index >= offset:  # only parse the lines that are returned
                rows.append(json.loads(raw.removeprefix(BOM)))
            index += 1
    return rows


# ---- Parquet ----------------------------------------------------------------------------


def _inspect_parquet(src: Path, dest_dir: Path, limits: Limits) -> Inspected:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with open(src, "rb") as f:
        f.seek(-4, 2)
        if f.read(4) != b"PAR1":
            message = "The Parquet file is cut short (no footer); upload the whole file again."
            raise DatasetError("invalid_parquet", message)
    try:
        parquet = pq.ParquetFile(src)
    except (pa.ArrowException, OSError) as e:
        raise DatasetError("invalid_parquet", f"The Parquet file cannot be read: {e}.") from None
    if parquet.metadata.num_rows > limits.max_rows:  # known from the footer: fail before reading
        raise _too_many_rows(limits)

    def rows() -> Iterator[tuple[str, dict]]:
        n = 0
        batches = parquet.iter_batches(batch_size=10_000)
        while True:
            try:
                batch = next(batches, None)
            except (pa.ArrowException, OSError) as e:
                raise DatasetError("invalid_parquet", f"The Parquet file is damaged after row {n}: {e}.") from None
            if batch is None:
                return
            for row in batch.to_pylist():
                n += 1
                yield f"Row {n}", row

    with parquet:
        format, num_rows, _ = _check_rows(rows(), limits)
        columns = list(parquet.schema_arrow.names)
    shutil.copyfile(src, dest_dir / "data.parquet")
    return Inspected(format, num_rows, columns, "data.parquet")


def _parquet_slice(path: Path, offset: int, limit: int) -> list[dict]:
    import pyarrow.parquet as pq

    with pq.ParquetFile(path) as parquet:
        groups, first_row, start = [], None, 0
        for i in range(parquet.num_row_groups):
            size = parquet.metadata.row_group(i).num_rows
            if start + size > offset and start < offset + limit:
                groups.append(i)
                first_row = start if first_row is None else first_row
            start += size
        if not groups or limit == 0:
            return []
        table = parquet.read_row_groups(groups)
    return table.slice(offset - first_row, limit).to_pylist()


# ---- zip of videos ----------------------------------------------------------------------


def _inspect_zip(src: Path, dest_dir: Path, limits: Limits) -> Inspected:
    try:
        with zipfile.ZipFile(src) as archive:
            files = _safe_members(archive, limits)
            videos_dir = dest_dir / "videos"
            videos_dir.mkdir()
            rows = _caption_rows(archive, files)  # checked before anything is unpacked
            _extract(archive, files, videos_dir, limits)
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
    declared = sum(info.file_size for info in entries)
    if declared > limits.max_unpacked_bytes:
        raise DatasetError(
            "unsafe_zip", f"The zip unpacks to {declared:,} bytes; the most allowed is {limits.max_unpacked_bytes:,}."
        )
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


def _extract(archive: zipfile.ZipFile, files: dict[str, zipfile.ZipInfo], videos_dir: Path, limits: Limits) -> None:
    """Copy entries out one by one, counting bytes, since headers can lie about sizes."""
    root, written = videos_dir.resolve(), 0
    for name, info in files.items():
        if name == "metadata.jsonl":  # replaced by the normalised one already written
            continue
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

"""Check an uploaded dataset file, store it, and read rows back for previews.

Three kinds of upload, told apart by content rather than by name: JSON Lines and Parquet
for the text methods, and a zip of videos with captions for `sft_video_gen`. Every row is
checked on upload so that a bad file fails here, with a line number a person can fix,
instead of minutes into a training job. Pure module: no web framework, no torch; pyarrow
is imported inside the functions that need it so importing this stays cheap.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
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


class DatasetError(Exception):
    def __init__(self, code: str, message: str, param: str | None = "file"):
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param


# Clips are already compressed, so a zip of them unpacks to about its own size; a much larger
# total is a zip bomb. The floor keeps a small --max-upload-mb usable for a zip of small clips.
UNPACKED_PER_UPLOAD_BYTE = 4
MIN_UNPACKED_BYTES = 256 * 1024**2


@dataclass(frozen=True)
class Limits:
    max_rows: int = 10_000_000
    max_zip_files: int = 100_000
    max_unpacked_bytes: int = 50 * 1024**3

    @classmethod
    def for_upload(cls, max_upload_bytes: int) -> Limits:
        """The limits of a box whose uploads are at most `max_upload_bytes` (--max-upload-mb)."""
        return cls(max_unpacked_bytes=max(UNPACKED_PER_UPLOAD_BYTE * max_upload_bytes, MIN_UNPACKED_BYTES))


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
        from .dataset_zips import inspect_zip  # it imports this module's row readers

        return inspect_zip(Path(src), dest_dir, limits)
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


def rows_at(dest_dir: Path, inspected_format: str, stored_path: str, numbers: Iterable[int]) -> list[dict]:
    """The rows at these 0-based row numbers of a stored dataset, in the order given, read in one pass.

    An evaluation samples rows across the whole dataset; reading each with preview_rows would
    scan a JSON Lines file from the top once per row, or open a Parquet file once per row.
    """
    numbers = list(numbers)
    wanted = sorted(set(numbers))
    if wanted and wanted[0] < 0:
        raise IndexError(f"row {wanted[0]} is not a row number")
    path = Path(dest_dir) / stored_path
    if inspected_format == "video_captions":
        found = _jsonl_at(path / "metadata.jsonl", wanted)
        for row in found.values():
            video = path / row["video"]
            row["bytes"] = video.stat().st_size if video.is_file() else None
    elif path.suffix == ".parquet":
        found = _parquet_at(path, wanted)
    else:
        found = _jsonl_at(path, wanted)
    missing = [n for n in wanted if n not in found]
    if missing:
        raise IndexError(f"row {missing[0]} is past the end of {stored_path}")
    return [found[n] for n in numbers]


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


def _jsonl_at(path: Path, wanted: list[int]) -> dict[int, dict]:
    """{row number: row} for the sorted `wanted`, stopping at the last of them; blank lines are not rows."""
    found: dict[int, dict] = {}
    if not wanted:
        return found
    targets = iter(wanted)
    target = next(targets)
    index = 0
    with open(path, "rb") as f:
        for raw in f:
            if not raw.strip():
                continue
            if index == target:  # only parse the lines that are returned
                found[index] = json.loads(raw.removeprefix(BOM))
                target = next(targets, None)
                if target is None:
                    break
            index += 1
    return found


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


def _parquet_at(path: Path, wanted: list[int]) -> dict[int, dict]:
    """{row number: row} for the sorted `wanted`: only the row groups that hold one are read, one at a time."""
    import pyarrow.parquet as pq

    found: dict[int, dict] = {}
    with pq.ParquetFile(path) as parquet:
        start, k = 0, 0
        for i in range(parquet.num_row_groups):
            if k == len(wanted):
                break
            end = start + parquet.metadata.row_group(i).num_rows
            local = []
            while k < len(wanted) and wanted[k] < end:
                local.append(wanted[k] - start)
                k += 1
            if local:
                rows = parquet.read_row_group(i).take(local).to_pylist()
                found.update(zip((start + j for j in local), rows))
            start = end
    return found

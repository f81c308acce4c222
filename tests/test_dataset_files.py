"""Uploaded dataset files: detection, validation, safe storage and previews (real files only)."""

from __future__ import annotations

import io
import json
import stat
import struct
import tempfile
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from trainers.tiny_video import square_clip
from veri_box.dataset_files import DatasetError, Limits, compatible_methods, inspect_upload, preview_rows, rows_at


def _clip_bytes(frames: int) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        return square_clip(Path(tmp) / "clip.mp4", frames=frames).read_bytes()


VIDEO = _clip_bytes(12)  # a real 48x48 H.264 clip: every video is decoded on upload
FACTS = {"frames": 12, "width": 48, "height": 48, "fps": 8.0}


# ---- helpers ----------------------------------------------------------------------------


def jsonl(*rows: object) -> bytes:
    return b"".join(json.dumps(row).encode() + b"\n" for row in rows)


def parquet_bytes(rows: list[dict], row_group_size: int | None = None) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buffer, row_group_size=row_group_size)
    return buffer.getvalue()


def zip_bytes(entries: dict[str, bytes | str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def metadata(*rows: dict) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


class Upload:
    """One upload: the client's temp file and the empty folder it may be stored in."""

    def __init__(self, root: Path, content: bytes, filename: str):
        self.root = root
        self.src = root / "upload.tmp"
        self.src.write_bytes(content)
        self.filename = filename
        self.dest = root / "dest"
        self.dest.mkdir()

    def inspect(self, limits: Limits = Limits()):
        return inspect_upload(self.src, self.filename, self.dest, limits)

    def rejected(self, code: str, limits: Limits = Limits()) -> str:
        with pytest.raises(DatasetError) as caught:
            self.inspect(limits)
        assert caught.value.code == code, caught.value.message
        assert caught.value.param == "file"
        # Whatever happened, nothing was written beside dest_dir.
        assert sorted(p.name for p in self.root.iterdir()) == ["dest", "upload.tmp"]
        return caught.value.message

    def preview(self, inspected, offset: int, limit: int) -> list[dict]:
        return preview_rows(self.dest, inspected.format, inspected.stored_path, offset, limit)

    def rows_at(self, inspected, numbers: list[int]) -> list[dict]:
        return rows_at(self.dest, inspected.format, inspected.stored_path, numbers)

    def one_by_one(self, inspected, numbers: list[int]) -> list[dict]:
        return [self.preview(inspected, n, 1)[0] for n in numbers]


@pytest.fixture
def upload(tmp_path: Path):
    def make(content: bytes, filename: str = "data.jsonl") -> Upload:
        return Upload(tmp_path, content, filename)

    return make


# ---- JSON Lines: formats ----------------------------------------------------------------

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]


@pytest.mark.parametrize(
    "row, format",
    [
        ({"prompt": "2+2?"}, "prompt_only"),
        ({"prompt": CHAT}, "prompt_only"),
        ({"prompt": "2+2?", "completion": "4"}, "prompt_completion"),
        ({"prompt": CHAT, "completion": [{"role": "assistant", "content": "4"}]}, "prompt_completion"),
        ({"messages": CHAT + [{"role": "assistant", "content": "4"}]}, "chatml"),
        ({"conversations": [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}]}, "sharegpt"),
        ({"instruction": "Add.", "input": "2+2", "output": "4"}, "alpaca"),
        ({"instruction": "Say hi.", "output": "hi"}, "alpaca"),
        ({"text": "Once upon a time"}, "text"),
    ],
)
def test_jsonl_format_is_detected_from_row_shape(upload, row, format):
    inspected = upload(jsonl(row, row)).inspect()
    assert (inspected.format, inspected.num_rows, inspected.stored_path) == (format, 2, "data.jsonl")
    assert inspected.columns == list(row)


def test_extra_columns_are_kept_in_first_seen_order(upload):
    inspected = upload(jsonl({"prompt": "a", "answer": "1"}, {"level": 3, "prompt": "b", "answer": "2"})).inspect()
    assert inspected.columns == ["prompt", "answer", "level"]


def test_jsonl_is_stored_byte_for_byte_with_bom_and_blank_lines(upload):
    content = b"\xef\xbb\xbf" + b'{"prompt": "caf\xc3\xa9"}\r\n\n  \n{"prompt": "b"}'
    up = upload(content)
    inspected = up.inspect()
    assert (inspected.format, inspected.num_rows) == ("prompt_only", 2)
    assert (up.dest / "data.jsonl").read_bytes() == content
    assert up.preview(inspected, 0, 10) == [{"prompt": "café"}, {"prompt": "b"}]


# An evaluation's sample of rows: read in one pass, the same rows as reading each one.
SAMPLE = [0, 1, 7, 13, 38, 39]


def test_sampled_jsonl_rows_in_one_pass_with_bom_and_blank_lines(upload):
    rows = [{"prompt": f"q{i}", "answer": str(i)} for i in range(40)]
    lines = jsonl(*rows).splitlines(keepends=True)
    lines[5:5] = [b"\n", b"   \r\n"]  # blank lines are not rows
    up = upload(b"\xef\xbb\xbf" + b"".join(lines))
    inspected = up.inspect()
    assert inspected.num_rows == 40
    assert up.rows_at(inspected, SAMPLE) == [rows[n] for n in SAMPLE] == up.one_by_one(inspected, SAMPLE)
    assert up.rows_at(inspected, [39, 0]) == [rows[39], rows[0]]  # the order asked for
    assert up.rows_at(inspected, []) == []
    with pytest.raises(IndexError):
        up.rows_at(inspected, [3, 40])


@pytest.mark.parametrize("row_group_size", [None, 7], ids=["one_group", "groups_of_7"])
def test_sampled_parquet_rows_in_one_pass(upload, row_group_size):
    rows = [{"prompt": f"q{i}", "completion": str(i), "level": i % 3} for i in range(40)]
    up = upload(parquet_bytes(rows, row_group_size=row_group_size), filename="train.parquet")
    inspected = up.inspect()
    assert up.rows_at(inspected, SAMPLE) == [rows[n] for n in SAMPLE] == up.one_by_one(inspected, SAMPLE)
    with pytest.raises(IndexError):
        up.rows_at(inspected, [40])


def test_file_name_does_not_decide_the_kind(upload):
    assert upload(jsonl({"text": "x"}), filename="whatever.bin").inspect().format == "text"


def test_blank_lines_under_any_name_are_an_empty_dataset(upload):
    upload(b"\n \n", filename="notes.txt").rejected("empty_dataset")


# ---- JSON Lines: errors name the line ---------------------------------------------------


def test_invalid_json_names_the_line_counting_blank_lines(upload):
    content = jsonl({"prompt": "a"}) + b"\n\n" + jsonl({"prompt": "b"}, {"prompt": "c"}) + b'{"prompt": "d" "x": 1}\n'
    message = upload(content).rejected("invalid_json")
    assert message == "Line 6 is not valid JSON: Expecting ',' delimiter (column 16)."


def test_pretty_printed_json_gets_a_hint(upload):
    message = upload(b'[\n  {"prompt": "a"}\n]\n', filename="data.json").rejected("invalid_json")
    assert message.startswith("Line 1 is not valid JSON") and "one whole JSON object" in message


def test_a_line_that_is_not_an_object_is_an_invalid_row(upload):
    message = upload(jsonl({"prompt": "a"}, {"prompt": "b"}, ["prompt", "c"])).rejected("invalid_row")
    assert message == "Line 3 is a JSON array, but every line must be a JSON object."


@pytest.mark.parametrize("content", [b"", b"\n\n   \n", b"\xef\xbb\xbf\n"])
def test_no_rows_is_an_empty_dataset(upload, content):
    upload(content).rejected("empty_dataset")


def test_non_utf8_names_the_line(upload):
    message = upload(jsonl({"prompt": "a"}) + b'{"prompt": "caf\xe9"}\n').rejected("invalid_encoding")
    assert message.startswith("Line 2 is not valid UTF-8") and "UTF-8" in message


def test_utf16_is_refused_with_advice(upload):
    assert "UTF-8" in upload('{"prompt": "a"}\n'.encode("utf-16")).rejected("invalid_encoding")


def test_a_first_row_of_no_known_shape_lists_the_accepted_shapes(upload):
    message = upload(jsonl({"question": "2+2?", "answer": "4"})).rejected("unknown_format")
    assert message.startswith('Line 1 matches no accepted row shape (its fields: "question", "answer").')
    assert '"prompt"' in message and '"messages"' in message and "alpaca" in message


def test_unknown_format_says_what_is_wrong_with_a_near_miss(upload):
    message = upload(b"\n" + jsonl({"prompt": "  "})).rejected("unknown_format")
    assert message.startswith('Line 2 looks like prompt_only data but has an empty "prompt".')


def test_rows_must_keep_the_first_rows_format(upload):
    rows = [{"prompt": f"q{i}"} for i in range(56)] + [{"question": "q57"}]
    message = upload(jsonl(*rows)).rejected("inconsistent_rows")
    assert message == 'Line 57 has no "prompt" field; the first row made this a prompt_only dataset.'


@pytest.mark.parametrize(
    "bad_row, expected",
    [
        ({"messages": [{"role": "bot", "content": "hi"}]}, 'Line 2 has "messages" item 1 with role "bot"'),
        ({"messages": []}, 'Line 2 has an empty "messages" list'),
        ({"messages": [{"role": "user", "content": 5}]}, 'Line 2 has "messages" item 1 without a "content" string'),
        ({"messages": "hi"}, 'Line 2 has "messages" as a string'),
    ],
)
def test_chat_messages_are_checked_row_by_row(upload, bad_row, expected):
    message = upload(jsonl({"messages": CHAT}, bad_row)).rejected("inconsistent_rows")
    assert message.startswith(expected) and message.endswith("the first row made this a chatml dataset.")


def test_a_completion_turns_up_in_a_prompt_only_dataset(upload):
    message = upload(jsonl({"prompt": "a"}, {"prompt": "b", "completion": "c"})).rejected("inconsistent_rows")
    assert message.startswith('Line 2 has a "completion" field')


def test_row_limit(upload):
    message = upload(jsonl(*[{"text": str(i)} for i in range(4)])).rejected("too_many_rows", Limits(max_rows=3))
    assert "3" in message


def test_random_binary_is_an_unsupported_file_type(upload):
    message = upload(bytes(range(256)) * 8, filename="model.bin").rejected("unsupported_file_type")
    assert "JSON Lines" in message and "Parquet" in message and ".zip" in message


def test_csv_is_an_unsupported_file_type(upload):
    upload(b"prompt,completion\n2+2?,4\n", filename="data.csv").rejected("unsupported_file_type")


def test_a_jsonl_named_file_that_is_not_json_gets_the_line_error(upload):
    assert upload(b"prompt,completion\n", filename="data.jsonl").rejected("invalid_json").startswith("Line 1 ")


# ---- Parquet ----------------------------------------------------------------------------


def test_parquet_is_detected_validated_and_stored(upload):
    rows = [{"prompt": f"q{i}", "completion": str(i), "level": i % 3} for i in range(25)]
    up = upload(parquet_bytes(rows, row_group_size=10), filename="train.parquet")
    inspected = up.inspect()
    assert (inspected.format, inspected.num_rows) == ("prompt_completion", 25)
    assert inspected.columns == ["prompt", "completion", "level"]
    assert inspected.stored_path == "data.parquet"
    assert pq.read_table(up.dest / "data.parquet").to_pylist() == rows


def test_parquet_chat_messages_are_understood(upload):
    rows = [{"messages": CHAT}, {"messages": CHAT[1:]}]
    assert upload(parquet_bytes(rows)).inspect().format == "chatml"


def test_parquet_errors_name_the_row(upload):
    rows = [{"prompt": f"q{i}"} for i in range(30)]
    rows[11]["prompt"] = ""
    message = upload(parquet_bytes(rows, row_group_size=5)).rejected("inconsistent_rows")
    assert message == 'Row 12 has an empty "prompt"; the first row made this a prompt_only dataset.'


def test_parquet_null_in_a_required_column(upload):
    rows = [{"prompt": "a", "completion": "b"}, {"prompt": "c", "completion": None}]
    assert upload(parquet_bytes(rows)).rejected("inconsistent_rows").startswith('Row 2 has "completion" as null')


def test_parquet_with_no_rows_is_empty(upload):
    buffer = io.BytesIO()
    pq.write_table(pa.table({"prompt": pa.array([], pa.string())}), buffer)
    upload(buffer.getvalue()).rejected("empty_dataset")


def test_parquet_row_limit_is_read_from_the_footer(upload):
    upload(parquet_bytes([{"text": "x"}] * 5)).rejected("too_many_rows", Limits(max_rows=4))


@pytest.mark.parametrize(
    "content",
    [b"PAR1" + b"\x07" * 100 + b"PAR1", parquet_bytes([{"text": "x"}] * 10)[:-30]],
    ids=["garbage", "truncated"],
)
def test_unreadable_parquet(upload, content):
    upload(content, filename="data.parquet").rejected("invalid_parquet")


# ---- zip of videos ----------------------------------------------------------------------


def test_video_zip_with_metadata_jsonl(upload):
    up = upload(
        zip_bytes(
            {
                "metadata.jsonl": metadata(
                    {"video": "videos/a.mp4", "caption": "a cat"},
                    {"video": "./videos/b.webm", "prompt": "a dog", "fps": 24},  # "prompt" means caption
                ),
                "videos/a.mp4": VIDEO,
                "videos/b.webm": VIDEO,
            }
        ),
        filename="clips.zip",
    )
    inspected = up.inspect()
    assert (inspected.format, inspected.num_rows, inspected.stored_path) == ("video_captions", 2, "videos")
    assert inspected.columns == ["video", "caption", "frames", "width", "height", "fps"]
    assert (up.dest / "videos/videos/a.mp4").read_bytes() == VIDEO
    normalised = [json.loads(line) for line in (up.dest / "videos/metadata.jsonl").read_text().splitlines()]
    assert normalised == [
        {"video": "videos/a.mp4", "caption": "a cat", **FACTS},
        {"video": "videos/b.webm", "caption": "a dog", **FACTS},  # the decoded fps wins over a declared one
    ]
    assert up.preview(inspected, 1, 5) == [
        {"video": "videos/b.webm", "caption": "a dog", **FACTS, "bytes": len(VIDEO)},
    ]
    assert up.rows_at(inspected, [0, 1]) == up.one_by_one(inspected, [0, 1])
    assert up.rows_at(inspected, [1])[0]["bytes"] == len(VIDEO)


def test_single_top_level_folder_is_stripped_and_mac_junk_ignored(upload):
    up = upload(
        zip_bytes(
            {
                "my-clips/": b"",
                "my-clips/metadata.jsonl": metadata({"video": "videos/a.mp4", "caption": "a cat"}),
                "my-clips/videos/a.mp4": VIDEO,
                "__MACOSX/my-clips/._metadata.jsonl": b"junk",
                "my-clips/.DS_Store": b"junk",
            }
        )
    )
    assert up.inspect().num_rows == 1
    assert sorted(p.relative_to(up.dest).as_posix() for p in up.dest.rglob("*") if p.is_file()) == [
        "videos/metadata.jsonl",
        "videos/videos/a.mp4",
    ]


def test_diffusers_layout(upload):
    up = upload(
        zip_bytes(
            {
                "prompts.txt": "a cat\n\na dog\n",
                "videos.txt": "videos/a.mp4\nvideos/b.mov\n\n",
                "videos/a.mp4": VIDEO,
                "videos/b.mov": VIDEO,
            }
        )
    )
    inspected = up.inspect()
    assert (inspected.format, inspected.num_rows) == ("video_captions", 2)
    assert inspected.columns == ["video", "caption", "frames", "width", "height", "fps"]
    assert [row["caption"] for row in up.preview(inspected, 0, 10)] == ["a cat", "a dog"]


def test_diffusers_files_must_pair_up(upload):
    content = zip_bytes({"prompts.txt": "a\nb\nc\n", "videos.txt": "a.mp4\nb.mp4\n", "a.mp4": VIDEO, "b.mp4": VIDEO})
    assert "prompts.txt has more non-empty lines than videos.txt" in upload(content).rejected("invalid_row")


def test_missing_video_names_the_row_and_path(upload):
    content = zip_bytes(
        {
            "metadata.jsonl": metadata(
                {"video": "videos/a.mp4", "caption": "a"},
                {"video": "videos/gone.mp4", "caption": "b"},
            ),
            "videos/a.mp4": VIDEO,
        }
    )
    message = upload(content).rejected("missing_video")
    assert message.startswith('metadata.jsonl line 2 names "videos/gone.mp4"')


def test_missing_video_in_diffusers_layout_names_the_videos_txt_line(upload):
    content = zip_bytes({"prompts.txt": "a\nb\n", "videos.txt": "a.mp4\n\nb.mp4\n", "a.mp4": VIDEO})
    assert upload(content).rejected("missing_video").startswith('videos.txt line 3 names "b.mp4"')


@pytest.mark.parametrize(
    "row, expected",
    [
        ({"video": "videos/a.mp4"}, 'metadata.jsonl line 1 has no "caption" text'),
        ({"caption": "a cat"}, 'metadata.jsonl line 1 has no "video" path'),
        ({"video": "videos/a.txt", "caption": "a cat"}, 'metadata.jsonl line 1 names "videos/a.txt", which is not a'),
    ],
)
def test_metadata_rows_need_a_video_and_a_caption(upload, row, expected):
    content = zip_bytes({"metadata.jsonl": metadata(row), "videos/a.mp4": VIDEO, "videos/a.txt": b"x"})
    assert upload(content).rejected("invalid_row").startswith(expected)


def test_bad_json_in_metadata_names_the_line(upload):
    content = zip_bytes({"metadata.jsonl": metadata({"video": "a.mp4", "caption": "a"}) + "{oops\n", "a.mp4": VIDEO})
    assert upload(content).rejected("invalid_json").startswith("metadata.jsonl line 2 is not valid JSON")


def test_zip_without_captions_explains_both_layouts(upload):
    message = upload(zip_bytes({"videos/a.mp4": VIDEO, "notes.txt": "hi"})).rejected("missing_metadata")
    assert "metadata.jsonl" in message and "prompts.txt" in message and "videos.txt" in message


def test_empty_metadata_is_an_empty_dataset(upload):
    upload(zip_bytes({"metadata.jsonl": "\n", "a.mp4": VIDEO})).rejected("empty_dataset")


@pytest.mark.parametrize("data", [b"not a video at all" * 10, VIDEO[: len(VIDEO) // 3]])
def test_undecodable_video_names_the_file(upload, data):
    up = upload(zip_bytes({**GOOD, "b.mp4": data, "metadata.jsonl": metadata(*ROWS_AB)}))
    message = up.rejected("invalid_video")
    assert message.startswith('"b.mp4"') and "re-encode" in message


def test_declared_frame_count_must_match_the_clip(upload):
    rows = metadata({"video": "a.mp4", "caption": "a", "num_frames": 49})
    message = upload(zip_bytes({"metadata.jsonl": rows, "a.mp4": VIDEO})).rejected("frame_count_mismatch")
    assert '"a.mp4" is listed with num_frames 49 but decodes to 12 frames' in message


def test_zip_row_limit(upload):
    rows = [{"video": "a.mp4", "caption": str(i)} for i in range(3)]
    upload(zip_bytes({"metadata.jsonl": metadata(*rows), "a.mp4": VIDEO})).rejected("too_many_rows", Limits(max_rows=2))


# ---- zip safety -------------------------------------------------------------------------

GOOD = {"metadata.jsonl": metadata({"video": "a.mp4", "caption": "a"}), "a.mp4": VIDEO}
ROWS_AB = ({"video": "a.mp4", "caption": "a"}, {"video": "b.mp4", "caption": "b"})


@pytest.mark.parametrize(
    "name, why",
    [
        ("../../evil.mp4", '".."'),
        ("videos/../../../evil.mp4", '".."'),
        ("/tmp/evil.mp4", "absolute path"),
        ("C:/evil.mp4", "Windows drive"),
        ("..\\..\\evil.mp4", "backslash"),
    ],
)
def test_zip_entries_that_escape_are_refused(upload, name, why):
    message = upload(zip_bytes({**GOOD, name: VIDEO})).rejected("unsafe_zip")
    assert f'"{name}"' in message and why in message


def test_symlink_entries_are_refused(upload):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in GOOD.items():
            archive.writestr(name, data)
        link = zipfile.ZipInfo("b.mp4")
        link.create_system = 3  # unix, so external_attr carries the file type
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, "/etc/passwd")
    assert "symbolic link" in upload(buffer.getvalue()).rejected("unsafe_zip")


def test_encrypted_entries_are_refused(upload):
    content = bytearray(zip_bytes({"a.mp4": VIDEO}))
    # zipfile cannot write encrypted entries, so set the "encrypted" flag in both headers by hand.
    for signature, flags_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = content.index(signature) + flags_at
        content[at] |= 0x1
    assert "encrypted" in upload(bytes(content)).rejected("unsafe_zip")


def test_too_many_entries(upload):
    content = zip_bytes({**GOOD, "b.mp4": VIDEO, "c.mp4": VIDEO})
    assert "4 entries" in upload(content).rejected("unsafe_zip", Limits(max_zip_files=3))


def test_declared_unpacked_size_limit(upload):
    upload(zip_bytes(GOOD)).rejected("unsafe_zip", Limits(max_unpacked_bytes=len(VIDEO)))


def test_a_header_that_understates_the_size_is_caught(upload):
    content = bytearray(zip_bytes({**GOOD, "metadata.jsonl": metadata(*ROWS_AB), "b.mp4": b"x" * 5000}))
    # Declare 10 bytes for b.mp4 in the central directory, which is what readers trust.
    entry = content.rindex(b"PK\x01\x02")
    assert content[entry + 46 : entry + 51] == b"b.mp4"
    content[entry + 24 : entry + 28] = struct.pack("<I", 10)
    upload(bytes(content)).rejected("invalid_zip")


def test_a_corrupt_zip_is_invalid(upload):
    upload(b"PK\x03\x04" + b"\x01" * 200, filename="clips.zip").rejected("invalid_zip")


# ---- previews ---------------------------------------------------------------------------


def test_jsonl_preview_pages_skip_blank_lines(upload):
    content = b"\n".join(json.dumps({"text": str(i)}).encode() + (b"\n" if i % 2 else b"") for i in range(10))
    up = upload(content)
    inspected = up.inspect()
    assert inspected.num_rows == 10
    assert [row["text"] for row in up.preview(inspected, 3, 4)] == ["3", "4", "5", "6"]
    assert [row["text"] for row in up.preview(inspected, 8, 4)] == ["8", "9"]
    assert up.preview(inspected, 10, 4) == [] and up.preview(inspected, 0, 0) == []


def test_parquet_preview_pages_across_row_groups(upload):
    up = upload(parquet_bytes([{"text": str(i)} for i in range(50)], row_group_size=7))
    inspected = up.inspect()
    assert [row["text"] for row in up.preview(inspected, 5, 10)] == [str(i) for i in range(5, 15)]
    assert [row["text"] for row in up.preview(inspected, 48, 10)] == ["48", "49"]
    assert up.preview(inspected, 50, 10) == []


def test_video_preview_pages(upload):
    rows = [{"video": f"v/{i}.mp4", "caption": f"clip {i}"} for i in range(6)]
    up = upload(zip_bytes({"metadata.jsonl": metadata(*rows), **{row["video"]: VIDEO for row in rows}}))
    inspected = up.inspect()
    assert up.preview(inspected, 4, 10) == [
        {"video": "v/4.mp4", "caption": "clip 4", **FACTS, "bytes": len(VIDEO)},
        {"video": "v/5.mp4", "caption": "clip 5", **FACTS, "bytes": len(VIDEO)},
    ]


def test_a_large_jsonl_inspects_and_previews(upload):
    content = b"".join(b'{"prompt": "What is %d + %d?", "answer": "%d"}\n' % (i, i, 2 * i) for i in range(200_000))
    up = upload(content)
    inspected = up.inspect()
    assert (inspected.format, inspected.num_rows) == ("prompt_only", 200_000)
    assert up.preview(inspected, 199_999, 10) == [{"prompt": "What is 199999 + 199999?", "answer": "399998"}]


# ---- methods ----------------------------------------------------------------------------


def test_compatible_methods():
    assert compatible_methods("chatml") == {"grpo"}
    assert compatible_methods("video_captions") == {"sft_video_gen"}
    assert compatible_methods("text") == set()

"""The documentation cannot drift from the code: docs/api.md lists exactly the routes the box
serves and every error code its source can produce, and no document points at files a user
of the project does not have."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from litestar.testing import TestClient

from veri_box.app import create_app
from veri_box.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
API_DOC = ROOT / "docs" / "api.md"
SOURCE_DIRS = ("veri_box", "trainers")
HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")

# A route named in the docs: "`GET /v1/training_jobs/{job_id}`", optionally followed by a
# query string or a body inside the same backticks ("`PUT /v1/... {api_key}`").
DOC_ROUTE = re.compile(rf"`({'|'.join(HTTP_METHODS)}) (/[^`\s?]*)[^`]*`")
CODE = re.compile(r"[a-z][a-z0-9]*(_[a-z0-9]+)*")


def normalise(path: str) -> str:
    """Path parameters compare by position, not by name: `/v1/datasets/{dataset_id}` and
    `/v1/datasets/{id}` are the same route, so renaming a parameter in the code does not break
    the docs (and the docs may say `{id}` where they speak of any resource)."""
    return re.sub(r"\{[^}]*\}", "{}", path.rstrip("/") or "/")


# ---- routes ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served_routes(tmp_path_factory: pytest.TempPathFactory) -> set[tuple[str, str]]:
    """(METHOD, normalised path) for every operation in the live OpenAPI document."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("data"), gpus="none")
    with TestClient(create_app(settings, run_jobs=False)) as client:
        response = client.get("/schema/openapi.json")
    assert response.status_code == 200, response.text
    routes = {
        (method.upper(), normalise(path))
        for path, operations in response.json()["paths"].items()
        for method in operations
        if method.upper() in HTTP_METHODS
    }
    assert routes, "the OpenAPI document lists no routes"
    return routes


@pytest.fixture(scope="module")
def api_doc() -> str:
    assert API_DOC.is_file(), "docs/api.md is missing"
    return API_DOC.read_text(encoding="utf-8")


def documented_routes(text: str) -> set[tuple[str, str]]:
    return {(method, normalise(path)) for method, path in DOC_ROUTE.findall(text)}


def test_every_served_route_is_documented(served_routes, api_doc):
    missing = sorted(served_routes - documented_routes(api_doc))
    assert not missing, "routes the box serves that docs/api.md does not name (as `METHOD /path`):\n" + "\n".join(
        f"  {m} {p}" for m, p in missing
    )


def test_every_documented_route_is_served(served_routes, api_doc):
    stale = sorted(documented_routes(api_doc) - served_routes)
    assert not stale, "docs/api.md names routes the box does not serve:\n" + "\n".join(f"  {m} {p}" for m, p in stale)


def test_the_route_scan_reads_the_forms_the_docs_use():
    text = "`GET /v1/training_jobs/{job_id}` and `GET /files/{path}?expires=&signature=`, `PUT /v1/x {api_key}`"
    assert documented_routes(text) == {
        ("GET", "/v1/training_jobs/{}"),
        ("GET", "/files/{}"),
        ("PUT", "/v1/x"),
    }


# ---- error codes -----------------------------------------------------------------------------

# Calls whose first argument is an error code: the 400 and 409 helpers, the dataset checks' and
# the trainers' exceptions.
CODE_FIRST = {"bad_request", "conflict", "DatasetError", "TrainerError"}
# Calls whose second argument is one: ApiError(status, code, ...), runner._fail_queued(job, code, ...).
CODE_SECOND = {"ApiError", "_fail_queued"}
CODE_NAMES = {"code", "error_code"}  # keywords, dict keys and variables that hold a code


def _name(func: ast.expr) -> str | None:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


def _strings(node: ast.expr | None) -> Iterator[str]:
    """The string literals an expression can evaluate to: a constant, either branch of
    `a if c else b`, any operand of `a or b`."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        yield node.value
    elif isinstance(node, ast.IfExp):
        yield from _strings(node.body)
        yield from _strings(node.orelse)
    elif isinstance(node, ast.BoolOp):
        for value in node.values:
            yield from _strings(value)


def _arg(call: ast.Call, index: int) -> ast.expr | None:
    return call.args[index] if len(call.args) > index else None


def _code_slots(target: ast.expr) -> list[int | None]:
    """Where an assignment target holds a code: None for a plain `code = ...`, the index for
    `code, message = ...`; empty if it holds none."""
    if isinstance(target, ast.Name) and target.id in CODE_NAMES:
        return [None]
    if isinstance(target, ast.Tuple):
        return [i for i, elt in enumerate(target.elts) if isinstance(elt, ast.Name) and elt.id in CODE_NAMES]
    return []


def codes_in_source(*sources: str) -> set[str]:
    """Every error code these modules' sources can produce, found by the forms the box uses:

    - `bad_request("code", ...)`, `conflict("code", ...)`, `DatasetError("code", ...)`,
      `TrainerError("code", ...)`, `progress.error("code", ...)`;
    - `ApiError(status, "code", ...)`, `_fail_queued(job, "code", ...)`;
    - `not_found("training job", ...)`, which answers `training_job_not_found`;
    - `code="..."` / `error_code="..."` keywords, `{"code": "..."}` dict entries, and
      `code = "..."` or `code, message = "...", ...` assignments (also via `a if c else b`);
    - `code, message = some_function(...)`: the codes `some_function` (defined in any of the
      sources) returns in that slot;
    - the values of a `_FRAMEWORK_CODES` dict (the codes of framework errors).

    Strings that are not snake_case (e.g. "204" in an htmx setting) are not codes."""
    found: set[str] = set()
    functions: dict[str, list[ast.FunctionDef | ast.AsyncFunctionDef]] = {}
    unpacked: list[tuple[str, int]] = []  # (function, slot) whose results are unpacked into a code
    for node in (node for source in sources for node in ast.walk(ast.parse(source))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            functions.setdefault(node.name, []).append(node)
        elif isinstance(node, ast.Call):
            name = _name(node.func)
            if name in CODE_FIRST:
                found.update(_strings(_arg(node, 0)))
            elif name in CODE_SECOND:
                found.update(_strings(_arg(node, 1)))
            elif name == "not_found":
                found.update(f"{kind.replace(' ', '_')}_not_found" for kind in _strings(_arg(node, 0)))
            elif name == "error" and isinstance(node.func, ast.Attribute) and _name(node.func.value) == "progress":
                found.update(_strings(_arg(node, 0)))
            for keyword in node.keywords:
                if keyword.arg in CODE_NAMES:
                    found.update(_strings(keyword.value))
        elif isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values):
                if isinstance(key, ast.Constant) and key.value in CODE_NAMES:
                    found.update(_strings(value))
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                framework = isinstance(target, ast.Name) and target.id == "_FRAMEWORK_CODES"
                if framework and isinstance(node.value, ast.Dict):
                    for value in node.value.values:
                        found.update(_strings(value))
                for slot in _code_slots(target):
                    value = node.value
                    if slot is not None and isinstance(value, ast.Tuple) and len(value.elts) > slot:
                        found.update(_strings(value.elts[slot]))
                    elif slot is None:
                        found.update(_strings(value))
                    elif isinstance(value, ast.Call) and _name(value.func):
                        unpacked.append((_name(value.func), slot))
    for function, slot in unpacked:
        for definition in functions.get(function, []):
            for node in ast.walk(definition):
                if isinstance(node, ast.Return) and isinstance(node.value, ast.Tuple) and len(node.value.elts) > slot:
                    found.update(_strings(node.value.elts[slot]))
    return {code for code in found if CODE.fullmatch(code)}


def source_files() -> list[Path]:
    files = sorted(path for directory in SOURCE_DIRS for path in (ROOT / directory).rglob("*.py"))
    assert files, "no source files found"
    return files


@pytest.fixture(scope="module")
def source_codes() -> set[str]:
    codes = codes_in_source(*(path.read_text(encoding="utf-8") for path in source_files()))
    assert len(codes) > 20, f"the extractor found suspiciously few codes: {sorted(codes)}"
    return codes


@pytest.fixture(scope="module")
def quoted_strings() -> set[str]:
    """Every quoted snake_case string in the source text, for codes the extractor cannot see
    (a code passed through a variable it does not follow)."""
    text = "\n".join(path.read_text(encoding="utf-8") for path in source_files())
    return {match.group(2) for match in re.finditer(r"(['\"])([a-z][a-z0-9_]*)\1", text)}


def error_code_table(text: str) -> set[str]:
    """The codes in the first column of the table under the "Error codes" heading."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if re.fullmatch(r"#+\s*Error codes\s*", line)), None)
    assert start is not None, 'docs/api.md has no "Error codes" section'
    codes = set()
    for line in lines[start + 1 :]:
        if line.startswith("#"):
            break
        cell = re.match(r"\|\s*`([^`]+)`\s*\|", line)
        if cell:
            codes.add(cell.group(1))
    assert codes, "docs/api.md's Error codes section has no table of codes"
    return codes


def test_every_error_code_is_in_the_table(source_codes, api_doc):
    missing = sorted(source_codes - error_code_table(api_doc))
    assert not missing, f"error codes the code can produce that docs/api.md's Error codes table lacks: {missing}"


def test_every_code_in_the_table_exists(source_codes, quoted_strings, api_doc):
    stale = sorted(error_code_table(api_doc) - source_codes - quoted_strings)
    assert not stale, f"docs/api.md's Error codes table lists codes no code produces: {stale}"


def test_the_extractor_finds_codes_in_every_form_the_box_uses():
    sample = """
raise bad_request("too_big", "The file is too big.", "file")
raise conflict("in_use", "It is in use.")
raise ApiError(401, "bad_key", "No such key.")
raise not_found("training job", job_id)
raise DatasetError("bad_row", "Line 3 is wrong.")
raise TrainerError("model_gone", "No model.")
progress.error("reward_broke", message)
self._fail_queued(job, "no_gpu", "Gone.")
store.transition_job(job_id, "failed", error_code="set_up_failed")
reported = {"code": "crashed", "message": problem}
code = "left_behind"
code = "unknown_field" if unknown else "invalid_hyperparameter"
code, message = "exited", "The trainer exited."
code, message = self._diagnose(job)
_FRAMEWORK_CODES = {405: "method_not_allowed"}
htmx = {"code": "204", "swap": False}
parser.error("give OUT_DIR, --dataset, or both")
"""
    other_module = """
def _diagnose(self, job):
    if job:
        return "out_of_memory", "Out of memory."
    return "gave_up", "It gave up."
"""
    assert codes_in_source(sample, other_module) == {
        "too_big",
        "in_use",
        "bad_key",
        "training_job_not_found",
        "bad_row",
        "model_gone",
        "reward_broke",
        "no_gpu",
        "set_up_failed",
        "crashed",
        "left_behind",
        "unknown_field",
        "invalid_hyperparameter",
        "exited",
        "out_of_memory",
        "gave_up",
        "method_not_allowed",
    }


def test_the_table_reader_reads_only_the_error_codes_section():
    text = "## Jobs\n| `queued` | x |\n## Error codes\n| code | status |\n| --- | --- |\n| `a_b` | 400 |\n## Next\n"
    assert error_code_table(text) == {"a_b"}


# ---- links -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["README.md", *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").rglob("*.md"))]
)
def test_documents_only_point_at_files_users_have(path: str):
    text = (ROOT / path).read_text(encoding="utf-8")
    assert "../shared" not in text, f"{path} points at ../shared, which users of the project do not have"


def test_readme_links_the_docs():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for doc in ("docs/api.md", "docs/architecture.md"):
        assert f"]({doc})" in readme, f"README.md does not link {doc}"
        assert (ROOT / doc).is_file(), f"{doc} is missing"

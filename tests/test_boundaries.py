"""The lines ARCHITECTURE.md draws between the parts, each checked on the real code:
the server never loads the training stack, trainers never reach into the server, and every
setting is documented where a user looks for it."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from veri_box.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
VERI_BOX_CLI = Path(sys.executable).parent / "veri-box"

# Heavy libraries that belong in trainer processes only: importing any of them in the server
# would cost seconds of start-up and gigabytes of memory.
TRAINING_LIBRARIES = {"torch", "transformers", "trl", "peft", "diffusers", "bitsandbytes", "accelerate", "datasets"}
SERVER_PACKAGES = {"litestar", "veri_box"}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) for every import in a file, at any depth (inside functions
    too), plus `importlib.import_module("x")` / `__import__("x")` with a literal name.
    Relative imports stay inside their own package and are skipped."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and (getattr(node.func, "attr", None) == "import_module" or getattr(node.func, "id", None) == "__import__")
        ):
            found.append((node.lineno, node.args[0].value))
    return found


def violations(package: str, forbidden: set[str]) -> list[str]:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no Python files under {package}/"
    return [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in files
        for line, name in imported_modules(path)
        if name.split(".")[0] in forbidden
    ]


# ---- (a) the running server -------------------------------------------------------------------


def test_server_starts_without_loading_the_training_stack(tmp_path: Path):
    # A fresh interpreter: this test process may have loaded anything already.
    script = f"""
import json, pkgutil, importlib, sys
from pathlib import Path
import veri_box, veri_box.app, veri_box.cli
from veri_box.app import create_app
from veri_box.settings import Settings
app = create_app(Settings(data_dir=Path(sys.argv[1]), gpus="none"))
veri_box.cli.build_parser()
# Every other server module too, so a new one cannot slip the rule by not being imported here.
for module in pkgutil.iter_modules(veri_box.__path__):
    if module.name != "__main__":  # that one runs the CLI
        importlib.import_module("veri_box." + module.name)
heavy = {sorted(TRAINING_LIBRARIES)!r}
print(json.dumps(sorted(name for name in sys.modules if name.split(".")[0] in heavy)))
"""
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "data")], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded == [], f"the server process loaded training libraries: {loaded}"


# ---- (b) imports, read from the source ----------------------------------------------------------


def test_trainers_never_import_the_server():
    # Their whole contract with the server is config.json in, progress.jsonl + train.log + files out.
    assert violations("trainers", SERVER_PACKAGES) == []


def test_server_code_never_imports_training_libraries_at_any_level():
    assert violations("veri_box", TRAINING_LIBRARIES) == []


def test_the_import_scan_sees_nested_and_dynamic_imports(tmp_path: Path):
    """The scan above is only as good as its parser: show it catches the sneaky forms."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import os\n"
        "from . import sibling\n"
        "def load():\n"
        "    import torch.nn\n"
        "    from transformers import AutoModel\n"
        "    return importlib.import_module('peft'), __import__('trl')\n"
    )
    names = [name for _, name in imported_modules(sample)]
    assert sorted(names) == ["os", "peft", "torch.nn", "transformers", "trl"]


# ---- (c) every setting is documented -------------------------------------------------------------

SETTINGS = [f for f in fields(Settings)]


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@pytest.fixture(scope="module")
def serve_help() -> str:
    result = subprocess.run([str(VERI_BOX_CLI), "serve", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda f: f.name)
def test_every_setting_has_help_text(setting):
    assert str(setting.metadata.get("help", "")).strip(), f"Settings.{setting.name} has no help text"


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda f: f.name)
def test_every_setting_is_a_serve_flag(setting, serve_help: str):
    assert re.search(rf"(^|\s){re.escape(flag(setting.name))}(?![\w-])", serve_help), (
        f"{flag(setting.name)} is missing from `veri-box serve --help`:\n{serve_help}"
    )


@pytest.fixture(scope="module")
def readme_settings_table() -> str:
    """The rows of the table under README.md's "Settings" heading."""
    readme = ROOT / "README.md"
    assert readme.is_file(), "README.md is missing; it must document every `veri-box serve` flag"
    lines = readme.read_text(encoding="utf-8").splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("#") and "settings" in line.lower()), None)
    assert start is not None, "README.md has no Settings section"
    section = []
    for line in lines[start + 1 :]:
        if line.startswith("#"):
            break
        section.append(line)
    table = "\n".join(line for line in section if line.lstrip().startswith("|"))
    assert table, "README.md's Settings section has no table"
    return table


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda f: f.name)
def test_every_setting_is_in_the_readme_settings_table(setting, readme_settings_table: str):
    assert re.search(rf"(?<![\w-]){re.escape(flag(setting.name))}(?![\w-])", readme_settings_table), (
        f"{flag(setting.name)} is missing from README.md's settings table"
    )


# ---- (d) the runner is no web module's client -------------------------------------------------

WEB_NAMES = {"get", "post", "put", "patch", "delete", "route", "Controller", "Router"}


def _server_imports(path: Path) -> set[str]:
    """The veri_box modules a server file imports (relative `from . import x` and `from .x import y`)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found |= {node.module} if node.module else {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("veri_box."):
            found.add(node.module.split(".")[1])
    return {name for name in found if (ROOT / "veri_box" / f"{name}.py").is_file()}


def _serves_routes(path: Path) -> bool:
    """Whether a module defines HTTP handlers: it imports Litestar's route decorators or controllers."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import) and any(alias.name == "litestar" for alias in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and node.module == "litestar":
            if WEB_NAMES & {alias.name for alias in node.names}:
                return True
    return False


def runner_closure() -> set[str]:
    seen, todo = set(), ["runner"]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += _server_imports(ROOT / "veri_box" / f"{name}.py")
    return seen


def test_the_runner_imports_no_web_module():
    # It learns where files live from paths.py and builds the trainer's config itself; a module
    # with routes in its import closure would tie placement and supervision to the web layer.
    closure = runner_closure()
    assert {"paths", "executors", "job_config", "progress", "store"} <= closure
    web = sorted(name for name in closure if _serves_routes(ROOT / "veri_box" / f"{name}.py"))
    assert web == [], f"the runner imports web modules: {web}"


def test_the_web_module_check_sees_route_modules():
    assert _serves_routes(ROOT / "veri_box" / "jobs.py") and _serves_routes(ROOT / "veri_box" / "devices.py")
    assert not _serves_routes(ROOT / "veri_box" / "paths.py")

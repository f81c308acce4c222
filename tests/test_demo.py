"""`veri-box demo` against a real `veri-box serve`: a newcomer's first job, start to finish, with
no flags on the box's own machine, and the exact flag to pass when it cannot find the box."""

import os
import re
import stat
import subprocess
import urllib.request
from pathlib import Path

from serving import FAKE_TRAINERS, REPO, VERI_BOX, Server, run_cli


def demo(*args: str, home: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """`veri-box demo ARGS` as a user runs it; with `home`, as if VERI_BOX_HOME were set to it
    (the data directory both `serve` and `demo` default to)."""
    env = {k: v for k, v in os.environ.items() if k not in ("VERI_BOX_HOME", "VERI_API_KEY", "VERI_API_URL")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    if home is not None:
        env["VERI_BOX_HOME"] = str(home)
    return subprocess.run([str(VERI_BOX), "demo", *args], capture_output=True, text=True, timeout=timeout, env=env)


def demo_keys(data_dir: Path) -> list[tuple[str, str]]:
    """(id, role) of each live key named "demo"."""
    listed = run_cli("keys", "list", "--data-dir", str(data_dir))
    assert listed.returncode == 0, listed.stderr
    rows = [line.split() for line in listed.stdout.splitlines()[1:]]
    return [(row[0], row[2]) for row in rows if row[1] == "demo"]


def test_demo_trains_the_tiny_model_and_the_reward_climbs(tmp_path):
    server = Server(tmp_path / "data", tmp_path / "serve.log", "--gpus", "none", "--cpu-slots", "1")
    try:
        server.start()
        result = demo(home=server.data_dir)  # no flags: the box's own machine and data directory
        assert result.returncode == 0, result.stdout + result.stderr + server.output()[-3000:]
        assert "status: completed" in result.stdout and "step  30/30" in result.stdout
        first, last = map(float, re.search(r"reward went from ([\d.]+) .* to ([\d.]+)", result.stdout).groups())
        assert last - first >= 0.1, result.stdout
    finally:
        server.stop()


def test_video_demo_trains_the_tiny_pipeline_and_prints_its_videos(tmp_path):
    server = Server(tmp_path / "data", tmp_path / "serve.log", "--gpus", "none", "--cpu-slots", "1")
    try:
        server.start()
        result = subprocess.run(
            [str(VERI_BOX), "demo", "--video", "--url", server.url, "--data-dir", str(server.data_dir)],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, result.stdout + result.stderr + server.output()[-3000:]
        assert "status: completed" in result.stdout and "step  40/40  loss" in result.stdout
        urls = re.findall(r"Validation video, step (\d+), .*: (\S+)", result.stdout)
        assert [step for step, _ in urls] == ["20", "40"]
        with urllib.request.urlopen(urls[-1][1]) as response:  # a signed link: no key needed
            assert response.headers["content-type"] == "video/mp4" and len(response.read()) > 500
    finally:
        server.stop()


def test_demo_says_when_no_box_is_running(tmp_path):
    result = subprocess.run(
        [str(VERI_BOX), "demo", "--url", "http://127.0.0.1:9", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1 and "start one with `veri-box serve`" in result.stderr


def test_demo_finds_the_box_and_reuses_one_key_without_flags(tmp_path):
    """On a box whose trainer is the stdlib fake (the job is quick), on a port of its own: the demo
    reads the URL the box recorded and keeps one key named "demo", readable by its user only."""
    server = Server(tmp_path / "data", tmp_path / "serve.log", "--gpus", "none", "--trainers", FAKE_TRAINERS)
    try:
        server.start()
        for _ in range(2):
            result = demo(home=server.data_dir, timeout=120)
            assert result.returncode == 0, result.stdout + result.stderr + server.output()[-3000:]
            assert "status: completed" in result.stdout and server.url in result.stdout, result.stdout
        keys = demo_keys(server.data_dir)
        assert len(keys) == 1, "the second run reuses the first run's key"
        assert keys[0][1] == "member", "the demo's kept key cannot change settings or other keys"
        key_file = server.data_dir / "demo-key"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert "Running job" not in server.output(), "no per-tick scheduler lines at the default log level"
    finally:
        server.stop()


def test_demo_names_the_missing_flag_and_creates_no_database(tmp_path):
    server = Server(tmp_path / "data", tmp_path / "serve.log", "--gpus", "none", "--trainers", FAKE_TRAINERS)
    empty = tmp_path / "empty"
    try:
        server.start()
        # A data directory with no box in it: say which flag, and leave it without a database.
        result = demo("--url", server.url, home=empty, timeout=120)
        assert result.returncode == 1 and "there is no box in" in result.stderr, result.stderr
        assert "--data-dir" in result.stderr and "--api-key" in result.stderr, result.stderr
        assert not empty.exists(), "no stray database (or folder) where there was no box"

        # Another box's data directory: its demo key is not this box's; no bare 401.
        other = tmp_path / "other"
        assert run_cli("keys", "create", "--name", "theirs", "--data-dir", str(other)).returncode == 0
        result = demo("--url", server.url, "--data-dir", str(other), timeout=120)
        assert result.returncode == 1, result.stdout + result.stderr
        assert f"the box at {server.url} does not serve {other}: pass --data-dir" in result.stderr, result.stderr

        result = demo("--url", server.url, "--api-key", "vk_" + "0" * 40, home=empty, timeout=120)
        assert result.returncode == 1 and "refused the API key" in result.stderr and "check --api-key" in result.stderr
    finally:
        server.stop()

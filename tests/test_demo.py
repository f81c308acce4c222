"""`veri-box demo` against a real `veri-box serve`: a newcomer's first job, start to finish."""

import re
import subprocess
import urllib.request

from serving import VERI_BOX, Server


def test_demo_trains_the_tiny_model_and_the_reward_climbs(tmp_path):
    server = Server(tmp_path / "data", tmp_path / "serve.log", "--gpus", "none", "--cpu-slots", "1")
    try:
        server.start()
        result = subprocess.run(
            [str(VERI_BOX), "demo", "--url", server.url, "--data-dir", str(server.data_dir)],
            capture_output=True,
            text=True,
            timeout=600,
        )
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

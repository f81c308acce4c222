"""Deployments on vLLM, through a real `veri-box serve` with a declared GPU (no /dev/nvidia*
here: the sandbox binds the device nodes there are, none).

Real vLLM needs a CUDA GPU, which this machine lacks, so the trainers' PYTHONPATH of this test
box holds tests/vllm_standin: a stand-in for `vllm serve` (vLLM's OpenAI server), written from
vLLM 0.31.0's source (its flags, socket, /health, answers, errors), that rejects flags vLLM does
not have. Everything of ours is real: the engine choice, trainers/serve_vllm.py in the sandbox,
the proxy, the official `openai` client. One test, skipped unless a real vLLM is importable (it
imports on a CPU machine: REAL_VLLM_PYTHON=/path/to/its/python), runs the argv serve_vllm
builds through vLLM's own `vllm serve` up to where the engine would start.

Also here: a deployment on two GPUs (vLLM's tensor parallel group; transformers' one process
seeing both), and placement FIFO across jobs and deployments of a device type (the cpu pool, and
two declared GPUs with deployments of one and of two)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from serving import KEY, REPO, Server
from test_deployments import HELLO, deploy, http, openai_error, submit, wait

GPU = "A100-80GB"
GPUS = 2  # the box's declared GPUs of that type
STANDIN = REPO / "tests" / "vllm_standin"


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A box with a declared GPU whose trainers see the vLLM stand-in; its data holds a tiny
    GRPO job trained first without the stand-in (TRL, seeing a `vllm` package, would import
    parts of vLLM the stand-in does not have)."""
    root = tmp_path_factory.mktemp("vllm")
    args = ("--gpus", f"{GPU}:{GPUS}", "--cpu-slots", "1")
    trainer = Server(root / "data", root / "train.log", *args)
    trainer.key = KEY.search(trainer.start()).group(0)
    try:
        client = http(trainer)
        job = submit(client)
        assert wait(client, f"/v1/training_jobs/{job}", "completed", "failed")["status"] == "completed"
    finally:
        trainer.stop()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(STANDIN), os.environ.get("PYTHONPATH")])))
        server = Server(root / "data", root / "serve.log", *args)
        server.start()
    server.key, server.job = trainer.key, job
    yield server
    server.stop()


def free(client: httpx.Client, kind: str) -> int:
    rows = client.get("/v1/gpu/availability", params={"provider": "local", "gpu_type": kind}).json()["availability"]
    return rows[0]["available"]


def argv_of(server: Server, deployment_id: str) -> list[str]:
    return json.loads((server.data_dir / "deployments" / deployment_id / "standin-argv.json").read_text())


def test_a_gpu_deployment_runs_on_vllm_with_the_jobs_lora_and_speaks_openai(box: Server):
    client, job = http(box), box.job

    # The engine: vLLM on the GPU when it is installed (omitted engine), transformers on cpu.
    on_cpu = deploy(client, "veri-box/tiny-lm", "huggingface")
    assert on_cpu.status_code == 200 and on_cpu.json()["engine"] == "transformers", on_cpu.text
    client.post(f"/v1/deployments/{on_cpu.json()['id']}/stop")
    body = {"model": "veri-box/tiny-lm", "source": "huggingface", "name": "x", "gpu": {"gpu_type": "cpu"}}
    error = openai_error(client.post("/v1/deployments", json={**body, "engine": "vllm"}), 400, "engine")
    assert error["code"] == "engine_unavailable" and "GPU" in error["message"], error
    wrong = openai_error(client.post("/v1/deployments", json={**body, "engine": "tgi"}), 400, "engine")
    assert wrong["code"] == "invalid_engine"
    explicit = client.post("/v1/deployments", json={**body, "engine": "transformers"})
    assert explicit.json()["engine"] == "transformers"
    client.post(f"/v1/deployments/{explicit.json()['id']}/stop")

    created = deploy(client, job, "training_job", gpu_type=GPU, gpu_count=1)
    assert created.status_code == 200, created.text
    dep = created.json()
    assert dep["engine"] == "vllm" and dep["gpu"]["gpu_type"] == GPU
    served = wait(client, f"/v1/deployments/{dep['id']}", "serving", "failed", timeout=240)
    assert served["status"] == "serving", served
    assert served["engine"] == "vllm" and free(client, GPU) == GPUS - 1
    assert "load_s" in next(e for e in served["events"] if e["type"] == "serving")["metadata"]

    # The exact command vLLM got: the base by its name, the job's adapter as LoRA "trained", the socket.
    output = box.data_dir / "jobs" / job / "output"
    rank = json.loads((output / "adapter_config.json").read_text())["r"]
    argv = argv_of(box, dep["id"])
    model_dir = argv[1]
    assert Path(model_dir, "config.json").is_file()
    assert argv == [
        "serve",
        model_dir,
        "--served-model-name",
        "veri-box/tiny-lm",
        "--uds",
        "serve.sock",
        "--tensor-parallel-size",
        "1",
        "--disable-uvicorn-access-log",
        "--enable-lora",
        "--lora-modules",
        json.dumps({"name": "trained", "path": str(output), "base_model_name": "veri-box/tiny-lm"}),
        "--max-lora-rank",
        str(next(r for r in (1, 8, 16, 32, 64, 128, 256, 320, 512) if r >= rank)),
    ]

    # The official client: the box sends vLLM the adapter's name; the answer names the client's model.
    oa = openai.OpenAI(base_url=dep["endpoint_url"], api_key=box.key)
    answer = oa.chat.completions.create(model="mine", messages=HELLO, max_tokens=4, n=2)
    assert answer.model == "mine" and [c.index for c in answer.choices] == [0, 1]
    assert answer.choices[0].message.content == "standin trained w1 w2"  # vLLM was asked for "trained"
    assert answer.choices[0].finish_reason == "length" and answer.usage.completion_tokens == 8

    # Streaming: usage when asked (the box always asks vLLM), none when not.
    chunks = list(
        oa.chat.completions.create(
            model="s", messages=HELLO, max_tokens=3, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant" and all(c.model == "s" for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "standin trained w1"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 3
    plain = list(oa.chat.completions.create(model="s", messages=HELLO, max_tokens=3, stream=True))
    assert all(c.choices and c.usage is None for c in plain), plain[-1]
    with client.stream(
        "POST", f"/v1/deployments/{dep['id']}/chat/completions", json={"messages": HELLO, "stream": True}
    ) as raw:
        lines = [line for line in raw.iter_lines() if line]
    assert raw.headers["content-type"].startswith("text/event-stream") and lines[-1] == "data: [DONE]"

    # Errors stay OpenAI's shape: ours before vLLM sees a request, vLLM's own (past its context) after.
    url = f"/v1/deployments/{dep['id']}/chat/completions"
    openai_error(client.post(url, json={"messages": HELLO, "temperature": 5}), 400, "temperature")
    past = openai_error(client.post(url, json={"messages": HELLO, "max_tokens": 4000}), 400, "max_tokens")
    assert past["code"] == "invalid_request" and "cannot be greater than max_model_len" in past["message"], past
    with pytest.raises(openai.BadRequestError):
        oa.chat.completions.create(model="s", messages=HELLO, max_tokens=4000)
    # The request log: vLLM's usage on every stream (the box asks for it even when the client
    # did not), a time to first token, and both kinds of refusal.
    deadline = time.monotonic() + 10
    while len(log := client.get(f"/v1/deployments/{dep['id']}/requests").json()["data"]) < 7:
        assert time.monotonic() < deadline, log
        time.sleep(0.2)
    streams = [r for r in log if r["streamed"]]
    assert client.get(f"/v1/deployments/{dep['id']}").json()["total_requests"] == 1 + 2 + 1 + 2
    assert len(log) == 7 and len(streams) == 3, log
    assert all(r["usage_reported"] and r["completion_tokens"] and r["ttft_ms"] is not None for r in streams), streams
    assert sorted(r["completion_tokens"] for r in streams)[:2] == [3, 3]
    refused = sorted(r["error_category"] for r in log if r["status_code"] == 400)
    assert refused == ["invalid_request", "invalid_request", "invalid_temperature"], log

    # Stop frees the GPU; the serving process and vLLM under it end.
    assert client.post(f"/v1/deployments/{dep['id']}/stop").json()["status"] == "stopped"
    deadline = time.monotonic() + 30
    while free(client, GPU) != GPUS and time.monotonic() < deadline:
        time.sleep(0.3)
    assert free(client, GPU) == GPUS


def test_a_vllm_that_dies_while_loading_fails_the_deployment_with_why(box: Server, tmp_path: Path):
    from trainers.tiny import build_tiny_lm

    model = build_tiny_lm(tmp_path / "tiny-oom", seed=0)  # the stand-in runs out of memory on it
    client = http(box)
    created = deploy(client, str(model), "huggingface", gpu_type=GPU, gpu_count=1)
    assert created.status_code == 200 and created.json()["engine"] == "vllm", created.text
    failed = wait(client, f"/v1/deployments/{created.json()['id']}", "failed", "serving", timeout=120)
    assert failed["status"] == "failed" and failed["failure_code"] == "server_crashed", failed
    assert "CUDA out of memory" in failed["error"]  # vLLM's own line, in the log's tail
    assert "does not fit in the GPU's memory" in failed["error"], failed["error"]  # and what it means
    deadline = time.monotonic() + 15
    while free(client, GPU) != GPUS and time.monotonic() < deadline:
        time.sleep(0.2)
    assert free(client, GPU) == GPUS


# vLLM 0.31's own lines: what every start logs about its KV cache, and its two refusals to start.
STARTED_KV = (
    "INFO 12-03 10:01:02 [gpu_worker.py:298] Available KV cache memory: 61.23 GiB\n"
    "INFO 12-03 10:01:02 [kv_cache_utils.py:1087] GPU KV cache size: 2,293,648 tokens\n"
)
NO_ROOM_FOR_ONE = (
    "ValueError: To serve at least one request with the models's max seq len (40960), (5.62 GiB KV cache is "
    "needed, which is larger than the available KV cache memory (4.50 GiB). Based on the available memory, "
    "the estimated maximum model length is 32768. Try increasing `gpu_memory_utilization` or decreasing "
    "`max_model_len` when initializing the engine.\n"
)


@pytest.mark.parametrize(
    ("log", "fits"),
    [
        (STARTED_KV + NO_ROOM_FOR_ONE, False),
        ("ValueError: No available memory for the cache blocks. Try increasing `gpu_memory_utilization`\n", False),
        # KV cache allocated, then something else broke: that is not "does not fit"
        (STARTED_KV + "RuntimeError: CUDA error: an illegal memory access was encountered\n", True),
    ],
)
def test_why_vllm_died_tells_out_of_memory_from_other_failures(tmp_path: Path, log: str, fits: bool):
    from trainers import serve_vllm

    (tmp_path / serve_vllm.LOG).write_text("starting vLLM: ...\n" + log)
    said = serve_vllm.why_it_died(tmp_path, 1)
    assert ("does not fit in the GPU's memory" not in said) is fits, said
    if fits:
        assert said.endswith("RuntimeError: CUDA error: an illegal memory access was encountered"), said


def wait_free(client: httpx.Client, count: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while free(client, GPU) != count and time.monotonic() < deadline:
        time.sleep(0.2)
    assert free(client, GPU) == count


def test_a_deployment_on_two_gpus_is_one_vllm_tensor_parallel_group_on_both(box: Server, tmp_path: Path):
    from trainers.tiny import MODEL_CONFIG, VOCAB_SIZE

    client = http(box)
    before = client.get("/v1/deployments").json()["data"]

    # More GPUs than the box has, several cpu slots, or a count vLLM cannot split the heads by: 400, nothing stored.
    more = deploy(client, "veri-box/tiny-lm", "huggingface", gpu_type=GPU, gpu_count=GPUS + 1)
    error = openai_error(more, 400, "gpu.gpu_count")
    assert error["code"] == "gpu_unavailable", error
    assert error["message"] == f"gpu_count {GPUS + 1} is more than the {GPUS} {GPU} device(s) this box has."
    cpu = openai_error(deploy(client, "veri-box/tiny-lm", "huggingface", gpu_type="cpu", gpu_count=2), 400)
    assert cpu["code"] == "invalid_gpu_count" and "cpu pool" in cpu["message"] and cpu["param"] == "gpu.gpu_count"
    odd = tmp_path / "three-heads"  # read at create time from its config.json; never loaded
    odd.mkdir()
    config = {**MODEL_CONFIG, "hidden_size": 48, "num_attention_heads": 3, "num_key_value_heads": 1}
    arch = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": VOCAB_SIZE}
    (odd / "config.json").write_text(json.dumps({**config, **arch}))
    heads = openai_error(deploy(client, str(odd), "huggingface", gpu_type=GPU, gpu_count=2), 400, "gpu.gpu_count")
    assert heads["code"] == "invalid_gpu_count" and "3 attention heads" in heads["message"], heads
    assert client.get("/v1/deployments").json()["data"] == before

    created = deploy(client, box.job, "training_job", gpu_type=GPU, gpu_count=2)
    assert created.status_code == 200, created.text
    dep = created.json()
    assert dep["gpu"] == {"gpu_type": GPU, "gpu_count": 2, "type": GPU, "count": 2} and dep["engine"] == "vllm"
    served = wait(client, f"/v1/deployments/{dep['id']}", "serving", "failed", timeout=120)
    assert served["status"] == "serving", served
    assert served["gpu"]["gpu_count"] == 2 and free(client, GPU) == 0  # both held
    provisioning = next(e for e in served["events"] if e["type"] == "provisioning")["metadata"]
    assert provisioning["devices"] == [0, 1], provisioning
    # One vLLM, tensor parallel over both GPUs, both visible to it (the stand-in checks as vLLM does).
    argv = argv_of(box, dep["id"])
    assert argv[argv.index("--tensor-parallel-size") + 1] == "2", argv
    env = json.loads((box.data_dir / "deployments" / dep["id"] / "standin-env.json").read_text())
    assert env == {"CUDA_VISIBLE_DEVICES": "0,1"}
    answer = openai.OpenAI(base_url=dep["endpoint_url"], api_key=box.key).chat.completions.create(
        model="m", messages=HELLO, max_tokens=3
    )
    assert answer.choices[0].message.content == "standin trained w1"

    # Stop frees both.
    assert client.post(f"/v1/deployments/{dep['id']}/stop").json()["status"] == "stopped"
    wait_free(client, GPUS)


def _pythons_serving(deployment_dir: Path) -> list[list[bytes]]:
    """The argv of every Python process that names this deployment's folder (not its sandbox's
    shell or bwrap): a launcher such as accelerate's, which starts one process per GPU, would be one."""
    found, folder = [], str(deployment_dir).encode()
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if Path(argv[0].decode()).name.startswith("python") and folder in argv:
            found.append([*argv[:-1], proc.name.encode()])  # the trailing NUL's empty item: the pid instead
    return found


def test_deployments_of_two_gpus_take_both_or_wait_first_come_first_served_with_jobs(tmp_path: Path):
    """Two declared GPUs, no vLLM: transformers deployments. A two-GPU deployment is one serving
    process with both GPUs visible; it takes both or waits; it waits behind an older queued job
    that wants one of them, and a newer job does not take the one left free before it."""
    box = Server(tmp_path / "data", tmp_path / "serve.log", "--gpus", f"{GPU}:2", "--cpu-slots", "0")
    box.key = KEY.search(box.start()).group(0)
    try:
        _fifo_gpus(box, http(box))
    finally:
        box.stop()


def _fifo_gpus(box: Server, client: httpx.Client) -> None:
    one = deploy(client, "veri-box/tiny-lm", "huggingface", gpu_type=GPU, gpu_count=1).json()
    assert one["engine"] == "transformers", one
    wait(client, f"/v1/deployments/{one['id']}", "serving", timeout=240)
    assert free(client, GPU) == 1
    both = deploy(client, "veri-box/tiny-lm", "huggingface", gpu_type=GPU, gpu_count=2).json()
    time.sleep(2)
    assert client.get(f"/v1/deployments/{both['id']}").json()["status"] == "queued"  # one free: not enough
    newer = submit(client, gpu={"type": GPU, "count": 1}, max_steps=500)
    time.sleep(2)
    assert client.get(f"/v1/training_jobs/{newer}").json()["status"] == "queued"  # the free one is kept
    assert free(client, GPU) == 1

    client.post(f"/v1/deployments/{one['id']}/stop")
    served = wait(client, f"/v1/deployments/{both['id']}", "serving", "failed", timeout=120)
    assert served["status"] == "serving" and served["gpu"]["gpu_count"] == 2, served
    assert free(client, GPU) == 0
    work = box.data_dir / "deployments" / both["id"]
    serving = _pythons_serving(work)
    assert len(serving) == 1, serving  # one process for both GPUs, not one per GPU as a trainer's
    assert serving[0][1:4] == [b"-m", b"trainers.serve", str(work).encode()], serving
    environ = Path(f"/proc/{int(serving[0][-1])}/environ").read_bytes().split(b"\0")
    assert b"CUDA_VISIBLE_DEVICES=0,1" in environ
    reply = client.post(f"/v1/deployments/{both['id']}/chat/completions", json={"messages": HELLO, "max_tokens": 3})
    assert reply.status_code == 200, reply.text
    assert client.get(f"/v1/training_jobs/{newer}").json()["status"] == "queued"

    # The job queued first; a two-GPU deployment after it waits while the job holds one GPU of two.
    later = deploy(client, "veri-box/tiny-lm", "huggingface", gpu_type=GPU, gpu_count=2).json()
    client.post(f"/v1/deployments/{both['id']}/stop")
    wait(client, f"/v1/training_jobs/{newer}", "running", timeout=60)
    time.sleep(2)
    assert client.get(f"/v1/deployments/{later['id']}").json()["status"] == "queued"
    assert free(client, GPU) == 1  # free, and kept for the deployment
    client.post(f"/v1/training_jobs/{newer}/cancel")
    served = wait(client, f"/v1/deployments/{later['id']}", "serving", "failed", timeout=120)
    assert served["status"] == "serving", served
    client.post(f"/v1/deployments/{later['id']}/stop")
    wait_free(client, 2)

    # A box restarted with fewer GPUs than a queued deployment asked for fails it, saying why;
    # the one serving on the GPU the box still has keeps serving.
    one = deploy(client, "veri-box/tiny-lm", "huggingface", gpu_type=GPU, gpu_count=1).json()
    wait(client, f"/v1/deployments/{one['id']}", "serving", timeout=120)
    both = deploy(client, "veri-box/tiny-lm", "huggingface", gpu_type=GPU, gpu_count=2).json()
    box.stop(keep_deployments=True)
    box.args = ("--gpus", f"{GPU}:1", "--cpu-slots", "0")
    box.start()
    client = http(box)
    failed = wait(client, f"/v1/deployments/{both['id']}", "failed", "serving", timeout=30)
    assert failed["failure_code"] == "gpu_unavailable" and "now has 1 A100-80GB" in failed["error"], failed
    assert client.get(f"/v1/deployments/{one['id']}").json()["status"] == "serving"
    client.post(f"/v1/deployments/{one['id']}/stop")


def test_a_deployment_waits_behind_an_older_queued_job_of_its_type(tmp_path: Path):
    """FIFO per device type across jobs and deployments: a freed cpu slot goes to the job that
    queued first, not to the deployment that queued after it."""
    box = Server(tmp_path / "data", tmp_path / "serve.log", "--gpus", "none", "--cpu-slots", "1")
    box.key = KEY.search(box.start()).group(0)
    try:
        _fifo(http(box))
    finally:
        box.stop()


def _fifo(client: httpx.Client) -> None:
    first = deploy(client, "veri-box/tiny-lm", "huggingface").json()
    wait(client, f"/v1/deployments/{first['id']}", "serving", timeout=240)
    job = submit(client, max_steps=500)  # queued: the one cpu slot serves
    time.sleep(1.5)
    later = deploy(client, "veri-box/tiny-lm", "huggingface").json()
    time.sleep(1.5)
    assert client.get(f"/v1/training_jobs/{job}").json()["status"] == "queued"
    client.post(f"/v1/deployments/{first['id']}/stop")
    wait(client, f"/v1/training_jobs/{job}", "running", timeout=60)
    time.sleep(2)
    assert client.get(f"/v1/deployments/{later['id']}").json()["status"] == "queued"
    client.post(f"/v1/training_jobs/{job}/cancel")
    # ...and the deployment gets the slot once the job has let it go.
    served = wait(client, f"/v1/deployments/{later['id']}", "serving", "provisioning", timeout=60)
    assert served["status"] in ("serving", "provisioning")
    client.post(f"/v1/deployments/{later['id']}/stop")


def _real_vllm() -> str | None:
    """A Python that imports the real vLLM (this one, or REAL_VLLM_PYTHON), or None."""
    for python in filter(None, [os.environ.get("REAL_VLLM_PYTHON"), sys.executable]):
        probe = subprocess.run(
            [python, "-c", "import vllm, sys; sys.exit('standin' in vllm.__version__)"], capture_output=True
        )
        if probe.returncode == 0:
            return python
    return None


def test_vllms_own_serve_accepts_the_command_serve_vllm_builds(tmp_path: Path):
    """`vllm serve` of the real vLLM, run as serve_vllm runs it (runpy of the module in its argv),
    its whole launch path but the engine: the CLI's parser and checks, ServeSubcommand.cmd (one
    API server, in this process), run_server's setup_server (its checks, the socket bound). Only
    run_server_worker, which would start the engine, is swapped for one that reports what it got,
    through vLLM's AsyncEngineArgs.from_cli_args as the real one takes it."""
    python = _real_vllm()
    if python is None:
        pytest.skip("needs a real vLLM (./install.sh --vllm, or REAL_VLLM_PYTHON=/path/to/python)")
    # A comma in the adapter's path: vLLM reads such a --lora-modules item as JSON, never as name=path.
    adapter, full = tmp_path / "lora, r12", tmp_path / "full"
    adapter.mkdir()
    full.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 12, "peft_type": "LORA"}))
    configs = [
        {"base_model": "org/base", "adapter_dir": str(adapter), "served_model": "trained", "lora_name": "trained",
         "tensor_parallel_size": 2},
        {"base_model": "org/base", "adapter_dir": str(full), "served_model": "trained", "lora_name": "trained"},
        {"base_model": "org/base", "adapter_dir": None, "served_model": "org/base", "lora_name": "trained"},
    ]  # fmt: skip
    script = f"""
import json, os, runpy, sys
sys.path.insert(0, {str(REPO)!r})
from trainers import serve_vllm
import vllm.entrypoints.launchers.api_server.entry as entry
from vllm.engine.arg_utils import AsyncEngineArgs

async def engine_would_start(listen_address, sock, args, **kwargs):
    engine = AsyncEngineArgs.from_cli_args(args)
    modules = [[m.name, m.path, m.base_model_name] for m in args.lora_modules or []]
    print(json.dumps([listen_address, sock.getsockname(), args.api_server_count, engine.model,
                      engine.served_model_name, engine.tensor_parallel_size, engine.enable_lora,
                      engine.max_lora_rank, modules]))
    sock.close()

entry.run_server_worker = engine_would_start
for config in json.loads({json.dumps(configs)!r}):
    argv = serve_vllm.command(config, "/models/base")
    assert argv[:2] == [sys.executable, "-m"], argv
    sys.argv = argv[2:]
    runpy.run_module(argv[2], run_name="__main__", alter_sys=True)
    os.unlink(serve_vllm.SOCKET)
"""
    # VLLM_TARGET_DEVICE=cpu: vLLM's engine arguments need a platform, and this machine has no GPU.
    env = {**os.environ, "VLLM_TARGET_DEVICE": "cpu"}
    done = subprocess.run([python, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lora, whole, base = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("[")]
    unix = ["unix:serve.sock", "serve.sock", None]  # one API server, in vLLM's process, on the socket
    assert lora == [*unix, "/models/base", ["org/base"], 2, True, 16, [["trained", str(adapter), "org/base"]]]
    assert whole == [*unix, str(full), ["trained"], 1, None, 16, []]
    assert base == [*unix, "/models/base", ["org/base"], 1, None, 16, []]

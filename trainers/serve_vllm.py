"""The serving process of a deployment on vLLM: `python -m trainers.serve_vllm DEPLOYMENT_DIR`.

The box starts it as it starts trainers/serve.py (the same sandbox, the same folder, the same
`serve.json`, the same `ready` file) when the deployment's engine is vLLM. It runs `vllm serve`
(vLLM's OpenAI-compatible server, through the module its `vllm` script runs, with this
interpreter) as its child, on the unix socket the box proxies to (`serve.sock`: vLLM's `--uds`),
and the box speaks OpenAI to it: `/v1/chat/completions`, `/health`. A job's LoRA adapter is
served by vLLM itself beside its base (`--enable-lora --lora-modules` with the adapter as JSON,
its rank from adapter_config.json), a full fine-tune as the model; the deployment's devices are
one tensor-parallel group. tests/test_deployments_vllm.py runs this argv through vLLM 0.31.0's
own `vllm serve` up to where the engine would start.

vLLM binds the socket before it loads the model, so the socket's existence says nothing: ready
is /health answering 200. SIGTERM is passed to vLLM and this process exits with its code; when
vLLM dies while loading, the last line of serve.log says why (out of memory, most often) for the
box's failure message. Only the standard library is imported here: vLLM runs in its own process.

`serve.json`: {"base_model", "models_dir", "adapter_dir", "served_model", "lora_name",
"tensor_parallel_size"}.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

SOCKET, READY, CONFIG, LOG = "serve.sock", "ready", "serve.json", "serve.log"
# `vllm serve` (vllm/entrypoints/cli/main.py is its console script's target). vLLM 0.31 deprecates
# `python -m vllm.entrypoints.openai.api_server` ("may be removed in a future release").
SERVER = ("vllm.entrypoints.cli.main", "serve")
# vLLM 0.31's --max-lora-rank takes one of these (vllm/config/lora.py, MaxLoRARanks).
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# What vLLM (or torch under it) prints when the model or its KV cache does not fit, and what to say.
# Not a bare "KV cache": every start logs "Available KV cache memory: ..." and "GPU KV cache size".
OUT_OF_MEMORY = (
    "CUDA out of memory",
    "OutOfMemoryError",
    "No available memory for the cache blocks",  # vllm/v1/core/kv_cache_utils.py
    "larger than the available KV cache memory",  # one sequence at max_model_len does not fit
    "can be stored in KV cache",  # "...larger than the maximum number of tokens that can be stored in KV cache"
)


def lora_rank(adapter_dir: Path) -> int:
    """The smallest --max-lora-rank vLLM accepts that holds the adapter's rank `r`."""
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    rank = int(config.get("r") or 8)
    return next((r for r in LORA_RANKS if r >= rank), LORA_RANKS[-1])


def command(config: dict, model_dir: str) -> list[str]:
    """vLLM's argv: the model (a folder on this machine), its LoRA adapter if any, the socket."""
    adapter = Path(config["adapter_dir"]) if config.get("adapter_dir") else None
    lora = adapter is not None and (adapter / "adapter_config.json").is_file()
    argv = [
        sys.executable,
        "-m",
        *SERVER,
        str(adapter) if adapter is not None and not lora else model_dir,  # `vllm serve MODEL`: first
        "--served-model-name",
        config["served_model"] if adapter is None or not lora else config["base_model"],
        "--uds",
        SOCKET,  # relative to the folder (its cwd): a socket's path is limited to 107 bytes
        "--tensor-parallel-size",
        str(int(config.get("tensor_parallel_size") or 1)),
        "--disable-uvicorn-access-log",  # the box logs requests
    ]
    if lora:
        # JSON, not `name=path`: vLLM reads an item with a comma as JSON, so a path with one would
        # fail as `name=path`; base_model_name makes /v1/models name the base as the adapter's parent.
        name = config.get("lora_name") or "trained"
        module = json.dumps({"name": name, "path": str(adapter), "base_model_name": config["base_model"]})
        argv += ["--enable-lora", "--lora-modules", module, "--max-lora-rank", str(lora_rank(adapter))]
    return argv


def environment(folder: Path) -> dict[str, str]:
    """vLLM's caches (compiled graphs, kernels) in the deployment's folder, never in HOME (the
    sandbox's HOME is a tmpfs gone with the process); no downloads, no usage reports."""
    cache = folder / "cache"
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "VLLM_CACHE_ROOT": str(cache / "vllm"),
        "VLLM_CONFIG_ROOT": str(cache / "vllm-config"),
        "XDG_CACHE_HOME": str(cache),
        "TRITON_CACHE_DIR": str(cache / "triton"),
        "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor"),
        "VLLM_NO_USAGE_STATS": "1",
        "VLLM_DO_NOT_TRACK": "1",
    }


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("serve", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


def healthy(path: str) -> bool:
    """Whether vLLM's /health answers 200 (while it loads, the bound socket accepts nothing)."""
    connection = _UnixConnection(path, timeout=2)
    try:
        connection.request("GET", "/health")
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


def why_it_died(folder: Path, code: int) -> str:
    """One line for the box's failure message, from what vLLM printed before it exited."""
    try:
        with (folder / LOG).open("rb") as fh:
            fh.seek(max((folder / LOG).stat().st_size - 65536, 0))
            tail = fh.read().decode("utf-8", errors="replace")
    except OSError:
        tail = ""
    if any(marker in tail for marker in OUT_OF_MEMORY):
        return (
            f"vLLM exited (code {code}) while loading the model: it does not fit in the GPU's memory "
            "(weights plus KV cache); serve it on a larger GPU, more GPUs, or with engine 'transformers'."
        )
    last = next((line.strip() for line in reversed(tail.splitlines()) if "Error" in line), "")
    return f"vLLM exited (code {code}) while loading the model" + (f": {last}" if last else "; see the lines above.")


def main(argv: list[str]) -> int:
    folder = Path(argv[1] if len(argv) > 1 else ".").resolve()
    config = json.loads((folder / CONFIG).read_text())
    started = time.monotonic()
    adapter = config.get("adapter_dir")
    if adapter and not (Path(adapter) / "adapter_config.json").is_file():
        model_dir = adapter  # a full fine-tune: the job's output is the whole model
    else:
        from trainers.models import resolve  # stdlib and huggingface_hub only, no torch

        model_dir = resolve(config["base_model"], config.get("models_dir") or None)
    os.chdir(folder)
    for stale in (SOCKET, READY):
        Path(stale).unlink(missing_ok=True)
    args = command(config, model_dir)
    print("starting vLLM: " + " ".join(args), flush=True)
    child = subprocess.Popen(args, env=environment(folder), stdin=subprocess.DEVNULL)
    # SIGTERM (the box stopping the deployment) goes to vLLM, which shuts down on it; we exit with its code.
    signal.signal(signal.SIGTERM, lambda *_: child.send_signal(signal.SIGTERM))
    while not healthy(SOCKET):
        code = child.poll()
        if code is not None:
            print(why_it_died(folder, code), flush=True)
            return code if code >= 0 else 128 - code
        time.sleep(0.5)
    (folder / READY).write_text(json.dumps({"pid": os.getpid(), "load_s": round(time.monotonic() - started, 2)}))
    print(f"serving {config['base_model']} with vLLM at {folder / SOCKET}", flush=True)
    code = child.wait()
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except KeyboardInterrupt:
        sys.exit(0)

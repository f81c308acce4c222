"""Stand-in for `python -m vllm.entrypoints.openai.api_server` (vLLM 0.31.0), for tests.

What it copies from vLLM's source (vllm/entrypoints/launchers/cli_args.py, engine/arg_utils.py,
launcher.py, serve/instrumentator/health.py, serve/engine/protocol.py):
- argparse with the flags the box passes, spelled as vLLM spells them; any other flag is an error
  (exit 2), as vLLM's parser (an argparse.ArgumentParser) does: `--model`, `--served-model-name`
  (one or more), `--uds`, `--tensor-parallel-size`/`-tp`, `--enable-lora`, `--lora-modules
  name=path ...`, `--max-lora-rank` (choices 1,8,16,32,64,128,256,320,512),
  `--disable-uvicorn-access-log`, `--gpu-memory-utilization`;
- the unix socket bound before the model loads (setup_server), so it accepts connections that
  get no answer until loading is done; then GET /health 200 (empty body), GET /v1/models,
  POST /v1/chat/completions (stream or not, `stream_options.include_usage` adding a last chunk
  with `choices: []` and `usage`); errors as ErrorResponse {"error": {message, type, param,
  code: HTTP status}}: an unknown model is 404 NotFoundError, max_tokens past the context
  (max_model_len, 2048 here) a 400 BadRequestError.
- a model folder whose name ends in `-oom` dies while loading with torch's out-of-memory error.

The answer is deterministic: the words "standin", the model name, then "w1 w2 ..." up to
max_tokens words (one word a token); it writes its argv to `standin-argv.json` in its cwd.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import socketserver
import sys
import time
from http.server import BaseHTTPRequestHandler

MAX_MODEL_LEN = 2048
RANKS = [1, 8, 16, 32, 64, 128, 256, 320, 512]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vllm.entrypoints.openai.api_server")
    p.add_argument("model_tag", nargs="?")
    p.add_argument("--model", default="Qwen/Qwen3-0.6B")
    p.add_argument("--served-model-name", nargs="+")
    p.add_argument("--uds")
    p.add_argument("--tensor-parallel-size", "-tp", type=int, default=1)
    p.add_argument("--enable-lora", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--lora-modules", nargs="+")
    p.add_argument("--max-lora-rank", type=int, choices=RANKS, default=16)
    p.add_argument("--disable-uvicorn-access-log", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    return p


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    names: list[str] = []

    def log_message(self, format: str, *args) -> None:
        pass

    def _json(self, status: int, body: dict | None) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, kind: str, message: str, param: str | None = None) -> None:
        self._json(status, {"error": {"message": message, "type": kind, "param": param, "code": status}})

    def do_GET(self) -> None:
        if self.path == "/health":
            self._json(200, None)
        elif self.path == "/v1/models":
            self._json(200, {"object": "list", "data": [{"id": n, "object": "model"} for n in self.names]})
        else:
            self._error(404, "NotFoundError", "Not Found")

    def do_POST(self) -> None:
        if self.path != "/v1/chat/completions":
            self._error(404, "NotFoundError", "Not Found")
            return
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        model = body.get("model")
        if model not in self.names:
            self._error(404, "NotFoundError", f"The model `{model}` does not exist.", "model")
            return
        prompt = sum(len(str(m.get("content", "")).split()) + 4 for m in body.get("messages", []))
        max_tokens = int(body.get("max_tokens") or 16)
        if prompt + max_tokens > MAX_MODEL_LEN:
            self._error(
                400,
                "BadRequestError",
                f"This model's maximum context length is {MAX_MODEL_LEN} tokens. However, you requested "
                f"{max_tokens} output tokens and your prompt contains {prompt} input tokens.",
                "max_tokens",
            )
            return
        words = (["standin", model] + [f"w{i}" for i in range(1, max_tokens + 1)])[:max_tokens]
        finish = "length" if len(words) == max_tokens else "stop"
        n = int(body.get("n") or 1)
        usage = {"prompt_tokens": prompt, "completion_tokens": n * len(words), "total_tokens": prompt + n * len(words)}
        base = {"id": "chatcmpl-standin", "created": int(time.time()), "model": model}
        if not body.get("stream"):
            choices = [
                {"index": i, "message": {"role": "assistant", "content": " ".join(words)}, "finish_reason": finish}
                for i in range(n)
            ]
            self._json(200, {**base, "object": "chat.completion", "choices": choices, "usage": usage})
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()

        def send(choices: list[dict], **extra) -> None:
            event = {**base, "object": "chat.completion.chunk", "choices": choices, **extra}
            self.wfile.write(b"data: " + json.dumps(event).encode() + b"\n\n")
            self.wfile.flush()

        for i in range(n):
            send([{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
            for k, word in enumerate(words):
                send([{"index": i, "delta": {"content": word if k == 0 else " " + word}, "finish_reason": None}])
            send([{"index": i, "delta": {}, "finish_reason": finish}])
        if (body.get("stream_options") or {}).get("include_usage"):
            send([], usage=usage)
        self.wfile.write(b"data: [DONE]\n\n")


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def main() -> int:
    args = parser().parse_args()
    with open("standin-argv.json", "w") as fh:
        json.dump(sys.argv[1:], fh)
    model = args.model_tag or args.model
    print(f"INFO standin vLLM API server version 0.31.0+standin, model {model}", flush=True)
    if not os.path.isdir(model):
        print(f"OSError: {model} is not a local folder (HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE')})")
        return 1
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(args.uds)  # as vLLM's setup_server: bound before the engine loads
    sock.listen(128)
    time.sleep(1.5)  # "loading the model": connections wait, unanswered
    if model.rstrip("/").endswith("-oom"):
        print(
            "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB. GPU 0 has a total "
            "capacity of 79.19 GiB of which 3.44 MiB is free.",
            flush=True,
        )
        return 1
    names = list(args.served_model_name or [model])
    if args.enable_lora:
        names += [item.split("=", 1)[0] for item in args.lora_modules or []]
    Handler.names = names
    server = Server(args.uds, Handler, bind_and_activate=False)
    server.socket.close()
    server.socket = sock
    print(f"INFO standin serving {names} on unix:{args.uds}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    sys.exit(main())

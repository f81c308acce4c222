"""Stand-in for `vllm serve` (`python -m vllm.entrypoints.cli.main serve`, vLLM 0.31.0), for tests.

What it copies from vLLM's source (vllm/entrypoints/cli/serve.py, launchers/cli_args.py,
utils/argparse_utils.py, engine/arg_utils.py, launchers/launcher.py, serve/instrumentator/health.py,
openai/chat_completion/serving.py, renderers/params.py, serve/engine/protocol.py):
- argparse with the flags the box passes, spelled as vLLM spells them; any other flag is an error
  (exit 2), as vLLM's parser (an argparse.ArgumentParser) does: `serve`, the model first
  (`model_tag`; `--model` still parses, vLLM warns it will go), `--served-model-name` (one or
  more), `--uds`, `--tensor-parallel-size`/`-tp`, `--enable-lora`, `--lora-modules` (`name=path`,
  or JSON {name, path, base_model_name}: an item with a comma is read as JSON), `--max-lora-rank`
  (choices 1,8,16,32,64,128,256,320,512), `--disable-uvicorn-access-log`,
  `--gpu-memory-utilization`;
- the unix socket bound before the model loads (setup_server), so it accepts connections that
  get no answer until loading is done; then GET /health 200 (empty body), GET /v1/models,
  POST /v1/chat/completions (stream or not: one role chunk per choice first, then the choices'
  tokens interleaved, the last token's chunk carrying finish_reason; `stream_options.include_usage`
  adding a last chunk with `choices: []` and `usage`); errors as ErrorResponse {"error": {message,
  type, param, code: HTTP status}}: an unknown model is 404 NotFoundError; max_tokens over the
  context (max_model_len, 2048 here) a 400 BadRequestError with param "max_tokens", a prompt that
  does not fit beside max_tokens one with param "input_tokens", in vLLM's words.
- a model folder whose name ends in `-oom` dies while loading with torch's out-of-memory error;
- a `--tensor-parallel-size` past the GPUs it sees (CUDA_VISIBLE_DEVICES) dies as vLLM's
  multiprocessing executor does (v1/executor/multiproc_executor.py, its assertion's words).

The answer is deterministic: the words "standin", the model name, then "w1 w2 ..." up to
max_tokens words (one word a token); it writes its argv to `standin-argv.json` in its cwd, and
the CUDA_VISIBLE_DEVICES it was given to `standin-env.json`.
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


class LoRAParserAction(argparse.Action):
    """vLLM's (cli_args.py): `name=path` unless the item has a comma, else JSON {name, path, ...}."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        modules = []
        for item in values or []:
            if "=" in item and "," not in item:
                name, path = item.split("=", 1)
                modules.append({"name": name, "path": path})
                continue
            try:
                module = json.loads(item)
            except json.JSONDecodeError:
                parser.error(f"Invalid JSON format for --lora-modules: {item}")
            if not isinstance(module, dict) or set(module) - {"name", "path", "base_model_name"}:
                parser.error(f"Invalid fields for --lora-modules: {item}")
            modules.append(module)
        setattr(namespace, self.dest, modules)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="vllm")
    commands = top.add_subparsers(dest="subparser", required=True)
    p = commands.add_parser("serve")
    p.add_argument("model_tag", nargs="?")
    p.add_argument("--model", default="Qwen/Qwen3-0.6B")
    p.add_argument("--served-model-name", nargs="+")
    p.add_argument("--uds")
    p.add_argument("--tensor-parallel-size", "-tp", type=int, default=1)
    p.add_argument("--enable-lora", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--lora-modules", nargs="+", action=LoRAParserAction)
    p.add_argument("--max-lora-rank", type=int, choices=RANKS, default=16)
    p.add_argument("--disable-uvicorn-access-log", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    return top


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
        if max_tokens > MAX_MODEL_LEN:  # renderers/params.py, TokenizeParams.__post_init__
            message = (
                f"max_tokens={max_tokens} cannot be greater than max_model_len={MAX_MODEL_LEN}. "
                "Please request fewer output tokens."
            )
            self._error(400, "BadRequestError", message, "max_tokens")
            return
        if prompt > MAX_MODEL_LEN - max_tokens:  # renderers/params.py, _token_len_check
            message = (
                f"This model's maximum context length is {MAX_MODEL_LEN} tokens. However, you requested "
                f"{max_tokens} output tokens and your prompt contains {prompt} input tokens, for a total of "
                f"{prompt + max_tokens} tokens. Please reduce the length of the input prompt or the number "
                "of requested output tokens."
            )
            self._error(400, "BadRequestError", message, "input_tokens")
            return
        words = (["standin", model] + [f"w{i}" for i in range(1, max_tokens + 1)])[:max_tokens]
        finish = "length" if len(words) == max_tokens else "stop"
        n = int(body.get("n") or 1)
        usage = {"prompt_tokens": prompt, "completion_tokens": n * len(words), "total_tokens": prompt + n * len(words)}
        base = {"id": "chatcmpl-standin", "created": int(time.time()), "model": model}
        if not body.get("stream"):
            # Its ChatCompletionResponse, model_dump()ed whole: unset fields come as null (some here),
            # an empty tool_calls is dropped.
            message = {"role": "assistant", "content": " ".join(words), "refusal": None, "reasoning": None}
            choices = [
                {"index": i, "message": message, "logprobs": None, "finish_reason": finish, "stop_reason": None}
                for i in range(n)
            ]
            nulls = {"system_fingerprint": None, "prompt_logprobs": None, "kv_transfer_params": None}
            self._json(200, {**base, "object": "chat.completion", "choices": choices, "usage": usage, **nulls})
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()

        def send(choices: list[dict], **extra) -> None:
            event = {**base, "object": "chat.completion.chunk", "choices": choices, **extra}
            self.wfile.write(b"data: " + json.dumps(event).encode() + b"\n\n")
            self.wfile.flush()

        # As chat_completion_stream_generator: the role chunk of every choice first, then each step's
        # token for every choice, the last one's chunk with finish_reason (no empty closing delta).
        for i in range(n):
            send([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}])
        for k, word in enumerate(words):
            last = k == len(words) - 1
            for i in range(n):
                choice = {"index": i, "delta": {"content": word if k == 0 else " " + word}, "logprobs": None}
                ending = {"finish_reason": finish, "stop_reason": None} if last else {"finish_reason": None}
                send([{**choice, **ending}])
        if (body.get("stream_options") or {}).get("include_usage"):
            send([], usage=usage)
        self.wfile.write(b"data: [DONE]\n\n")


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def main() -> int:
    args = parser().parse_args()
    with open("standin-argv.json", "w") as fh:
        json.dump(sys.argv[1:], fh)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    with open("standin-env.json", "w") as fh:
        json.dump({"CUDA_VISIBLE_DEVICES": visible}, fh)
    model = args.model_tag or args.model  # ServeSubcommand.cmd: the positional model wins
    print(f"INFO standin vLLM API server version 0.31.0+standin, model {model}", flush=True)
    if not os.path.isdir(model):
        print(f"OSError: {model} is not a local folder (HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE')})")
        return 1
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(args.uds)  # as vLLM's setup_server: bound before the engine loads
    sock.listen(128)
    gpus = len([d for d in (visible or "").split(",") if d.strip()])
    if args.tensor_parallel_size > gpus:
        print(
            "AssertionError: please set tensor_parallel_size "
            f"({args.tensor_parallel_size}) to less than max local gpu count ({gpus})",
            flush=True,
        )
        return 1
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
        names += [module["name"] for module in args.lora_modules or []]
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

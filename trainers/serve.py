"""The serving process of a deployment: `python -m trainers.serve DEPLOYMENT_DIR`.

The box starts it like a trainer (in the sandbox, on the device it placed it on) and is its only
client: it listens on a unix socket, `serve.sock` in its own folder (the sandbox has no network
of its own, and a socket file in the folder it shares with the box needs none), and speaks a
tiny HTTP protocol the box translates to OpenAI's:

    GET  /health    -> {"status": "ok", "model": ...}
    POST /generate  {"messages" | "prompt", "max_tokens", "temperature", "top_p", "n", "stop"}
                 -> NDJSON lines {"index": i, "text": "..."} as tokens come, then
                    {"done": true, "choices": [{"index", "text", "finish_reason"}],
                     "usage": {"prompt_tokens", "completion_tokens", "total_tokens"}}

Engine: transformers, a job's LoRA adapter loaded through PEFT and merged into its base (one
matmul per layer, as fast as the base). On several GPUs (a deployment with gpu_count > 1: the box
makes all of them visible to this one process) the model is split across them by layers
(device_map "auto", accelerate), for a model too big for one; on one GPU or the CPU it is loaded
whole onto it. Requests that arrive while a batch runs wait and form
the next batch (up to MAX_BATCH rows): one forward pass per token for all of them. On a GPU with
vLLM installed the box runs trainers/serve_vllm.py instead.

`serve.json` in the folder says what to load: {"base_model", "models_dir", "adapter_dir",
"max_batch"}. `ready` is written once the model is loaded and the socket listens. This module
imports only the standard library at the top: torch and transformers load in main().
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socketserver
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

SOCKET, READY, CONFIG = "serve.sock", "ready", "serve.json"
MAX_BATCH = 16


class Request:
    def __init__(self, prompt_ids: list[int], params: dict):
        self.prompt_ids = prompt_ids
        self.max_tokens = int(params.get("max_tokens") or 64)
        self.temperature = float(params.get("temperature", 1.0) if params.get("temperature") is not None else 1.0)
        self.top_p = float(params.get("top_p") if params.get("top_p") is not None else 1.0)
        self.stop = [s for s in (params.get("stop") or []) if s]
        self.n = int(params.get("n") or 1)
        self.out: queue.Queue = queue.Queue()  # ("delta", index, text) ... ("done", choices)


def device_map(visible_gpus: int) -> str | None:
    """from_pretrained's device_map for the GPUs this process sees: "auto" (accelerate splits the
    layers across them, filling each in turn) on more than one, else None (loaded whole, then
    moved to the one device)."""
    return "auto" if visible_gpus > 1 else None


class Engine:
    def __init__(self, config: dict):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from trainers.models import resolve

        self.torch = torch
        self.gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        self.device = "cuda" if self.gpus else "cpu"
        split = device_map(self.gpus)
        load = {"dtype": torch.bfloat16 if self.gpus else torch.float32}
        if split:
            load["device_map"] = split
        adapter = config.get("adapter_dir")
        if adapter and not (Path(adapter) / "adapter_config.json").is_file():
            base = adapter  # a full fine-tune: the job's output is the whole model, its base not needed
            model = AutoModelForCausalLM.from_pretrained(adapter, **load)
        else:
            base = resolve(config["base_model"], config.get("models_dir") or None)
            model = AutoModelForCausalLM.from_pretrained(base, **load)
        if adapter and base != adapter:
            from peft import PeftModel

            # Merged once at load: each layer is then one matmul again, as fast as the base.
            model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
        tokenizer_dir = adapter if adapter and (Path(adapter) / "tokenizer_config.json").is_file() else base
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        if split:
            # Already on its GPUs (a split model must not be moved whole): the prompt goes where its
            # first layer, the embedding, is; accelerate's hooks carry it from one GPU to the next.
            self.device = str(model.get_input_embeddings().weight.device)
            self.model = model.eval()
        else:
            self.model = model.to(self.device).eval()
        self.eos = self.tokenizer.eos_token_id
        self.pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else (self.eos or 0)
        self.max_batch = int(config.get("max_batch") or MAX_BATCH)
        self.queue: queue.Queue[Request] = queue.Queue()
        threading.Thread(target=self._loop, daemon=True).start()

    def encode(self, body: dict) -> list[int]:
        if body.get("messages") is not None:
            messages = body["messages"]
            if getattr(self.tokenizer, "chat_template", None):
                text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
                return self.tokenizer(text, add_special_tokens=False)["input_ids"]
            text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
        else:
            text = str(body.get("prompt", ""))
        return self.tokenizer(text)["input_ids"]

    def _loop(self) -> None:
        while True:
            batch = [self.queue.get()]
            rows = batch[0].n
            while rows < self.max_batch:
                try:
                    nxt = self.queue.get_nowait()
                except queue.Empty:
                    break
                batch.append(nxt)
                rows += nxt.n
            try:
                self._generate(batch)
            except Exception as err:  # one bad batch answers its requests with the error, never kills the server
                for req in batch:
                    req.out.put(("error", f"{type(err).__name__}: {err}"))

    def _generate(self, batch: list[Request]) -> None:
        torch = self.torch
        rows = [(req, i) for req in batch for i in range(req.n)]
        longest = max(len(req.prompt_ids) for req, _ in rows)
        ids = torch.full((len(rows), longest), self.pad, dtype=torch.long)
        mask = torch.zeros((len(rows), longest), dtype=torch.long)
        for r, (req, _) in enumerate(rows):  # left padding: every row's next token is at the end
            ids[r, longest - len(req.prompt_ids) :] = torch.tensor(req.prompt_ids)
            mask[r, longest - len(req.prompt_ids) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        temps = torch.tensor([req.temperature for req, _ in rows], device=self.device).unsqueeze(1)
        top_ps = torch.tensor([req.top_p for req, _ in rows], device=self.device).unsqueeze(1)
        greedy = temps.squeeze(1) <= 1e-5
        generated: list[list[int]] = [[] for _ in rows]
        texts = ["" for _ in rows]
        finish: list[str | None] = [None for _ in rows]
        limit = max(req.max_tokens for req, _ in rows)
        past, step_ids = None, ids
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            for _ in range(limit):
                out = self.model(
                    input_ids=step_ids,
                    attention_mask=mask,
                    position_ids=positions,
                    past_key_values=past,
                    use_cache=True,
                    # Only the last position's logits: for the prefill, all of them would be
                    # batch x prompt x vocab (16 x 512 x 152k in bf16: 2.5 GB) for nothing.
                    logits_to_keep=1,
                )
                past = out.past_key_values
                logits = out.logits[:, -1, :].float().to(self.device)  # split: from the last GPU
                probs = torch.softmax(logits / temps.clamp(min=1e-5), dim=-1)
                sorted_p, order = probs.sort(dim=-1, descending=True)
                keep = (sorted_p.cumsum(-1) - sorted_p) < top_ps  # nucleus: the smallest set reaching top_p
                sorted_p = sorted_p * keep
                sampled = order.gather(1, torch.multinomial(sorted_p / sorted_p.sum(-1, keepdim=True), 1)).squeeze(1)
                token = torch.where(greedy, logits.argmax(-1), sampled)
                for r, (req, index) in enumerate(rows):
                    if finish[r] is not None:
                        continue
                    t = int(token[r])
                    if t == self.eos:
                        finish[r] = "stop"
                        continue
                    generated[r].append(t)
                    text = self.tokenizer.decode(generated[r], skip_special_tokens=True)
                    cut = min((text.find(s) for s in req.stop if s in text), default=-1)
                    if cut >= 0:
                        text, finish[r] = text[:cut], "stop"
                    if finish[r] is None and len(generated[r]) >= req.max_tokens:
                        finish[r] = "length"
                    if text.endswith("\ufffd") and finish[r] is None:
                        continue  # half of a multi-byte character: wait for the rest
                    delta, texts[r] = text[len(texts[r]) :], text
                    if delta:
                        req.out.put(("delta", index, delta))
                if all(f is not None for f in finish):
                    break
                step_ids = token.unsqueeze(1)
                mask = torch.cat([mask, torch.ones_like(step_ids)], dim=1)
                positions = positions[:, -1:] + 1
        for req in batch:
            mine = [r for r, (owner, _) in enumerate(rows) if owner is req]
            choices = [{"index": rows[r][1], "text": texts[r], "finish_reason": finish[r] or "length"} for r in mine]
            completion = sum(len(generated[r]) for r in mine)
            usage = {
                "prompt_tokens": len(req.prompt_ids),
                "completion_tokens": completion,
                "total_tokens": len(req.prompt_ids) + completion,
            }
            req.out.put(("done", choices, usage))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # the response ends when the connection closes: no chunking to write
    engine: Engine

    def log_message(self, format: str, *args) -> None:  # the box logs requests; the child stays quiet
        pass

    def address_string(self) -> str:
        return "box"

    def _json(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/health":
            self._json(200, {"status": "ok", "device": self.engine.device, "gpus": self.engine.gpus})
        else:
            self._json(404, {"error": "not found"})

    def do_POST(self) -> None:
        if self.path != "/generate":
            self._json(404, {"error": "not found"})
            return
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            request = Request(self.engine.encode(body), body)
        except Exception as err:  # the box validates first; this is the last line of defence
            self._json(400, {"error": f"{type(err).__name__}: {err}"})
            return
        self.engine.queue.put(request)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.end_headers()
        while True:
            item = request.out.get()
            if item[0] == "delta":
                line = {"index": item[1], "text": item[2]}
            elif item[0] == "done":
                line = {"done": True, "choices": item[1], "usage": item[2]}
            else:
                line = {"done": True, "error": item[1]}
            try:
                self.wfile.write((json.dumps(line) + "\n").encode())
                self.wfile.flush()
            except OSError:  # the box went away (its client disconnected): the batch finishes regardless
                return
            if item[0] != "delta":
                return


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    request_queue_size = 128  # socketserver's 5 refuses (EAGAIN) the 6th of 8 clients connecting at once


def _stop(signum: int, frame: object) -> None:
    print("stopped on SIGTERM", flush=True)
    raise SystemExit(0)


def main(argv: list[str]) -> int:
    # In the sandbox this process is its pid namespace's init, which the kernel spares every
    # signal it has no handler for: without this, a stop waited out the grace period for SIGKILL.
    signal.signal(signal.SIGTERM, _stop)
    folder = Path(argv[1] if len(argv) > 1 else ".").resolve()
    config = json.loads((folder / CONFIG).read_text())
    started = time.monotonic()
    engine = Engine(config)
    os.chdir(folder)  # bind by a relative name: a unix socket's path is limited to 107 bytes
    for stale in (SOCKET, READY):
        Path(stale).unlink(missing_ok=True)
    Handler.engine = engine
    server = Server(SOCKET, Handler)
    os.chmod(SOCKET, 0o600)
    (folder / READY).write_text(json.dumps({"pid": os.getpid(), "load_s": round(time.monotonic() - started, 2)}))
    where = f"{engine.gpus} GPUs (device_map auto)" if device_map(engine.gpus) else engine.device
    print(f"serving {config['base_model']} on {where} at {folder / SOCKET}", flush=True)
    server.serve_forever(poll_interval=0.5)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except KeyboardInterrupt:
        sys.exit(0)

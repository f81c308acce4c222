"""Benchmark: what the box's chat endpoint adds to a deployment's generation (issue 17).

Starts a real `veri-box serve --gpus none --cpu-slots 1`, deploys the built-in tiny model
(`veri-box/tiny-lm`, source huggingface) on the cpu pool, and measures, greedy (temperature 0)
with the same prompt and max_tokens each time:

  (a) through the box: `POST /v1/deployments/{id}/chat/completions` with `stream: true` over
      HTTP with the API key: time to first token (first content chunk), total time, tokens/s
      (usage from `stream_options.include_usage`);
  (b) directly: the same generation asked of the serving process on its unix socket
      (`POST /generate`, the box's internal protocol), time to the first token line and total;
  (c) the proxy's overhead per request: median of (a) minus median of (b), TTFT and total;
  (d) requests/s with 8 concurrent clients (non-streaming, through the box and directly).

Target: proxy overhead < 10 ms per request.

    .venv/bin/python bench/deploy_latency.py
    .venv/bin/python bench/deploy_latency.py --requests 30 --max-tokens 32 --out bench/results/deploy_latency.txt
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Server, create_key, exit_on_sigterm  # noqa: E402

MESSAGES = [{"role": "user", "content": "Count to five:"}]


def box_stream(client: httpx.Client, dep: str, max_tokens: int) -> tuple[float, float, int]:
    body = {
        "messages": MESSAGES,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    t0 = time.perf_counter()
    first, tokens = None, 0
    with client.stream("POST", f"/v1/deployments/{dep}/chat/completions", json=body) as r:
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if first is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                first = time.perf_counter() - t0
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return first or 0.0, time.perf_counter() - t0, tokens


def direct_stream(direct: httpx.Client, max_tokens: int) -> tuple[float, float, int]:
    body = {"messages": MESSAGES, "max_tokens": max_tokens, "temperature": 0}
    t0 = time.perf_counter()
    first, tokens = None, 0
    with direct.stream("POST", "/generate", json=body) as r:
        for line in r.iter_lines():
            if not line.strip():
                continue
            item = json.loads(line)
            if first is None and not item.get("done"):
                first = time.perf_counter() - t0
            if item.get("done"):
                tokens = item["usage"]["completion_tokens"]
    return first or 0.0, time.perf_counter() - t0, tokens


def median_ms(values: list[float]) -> float:
    return round(statistics.median(values) * 1000, 2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20, help="sequential requests per path")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--concurrent-rounds", type=int, default=4, help="requests per client in (d)")
    parser.add_argument("--out", help="also write the report to this file")
    args = parser.parse_args()
    exit_on_sigterm()
    root = Path(tempfile.mkdtemp(prefix="deploy-bench-"))
    data = root / "data"
    lines: list[str] = []

    def say(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    with Server(data, flags=("--gpus", "none", "--cpu-slots", "1")) as server:
        server.wait_healthy()
        key = re.search(r"vk_[0-9a-f]{40}", create_key(data)).group(0)
        client = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=300)
        body = {"model": "veri-box/tiny-lm", "source": "huggingface", "name": "bench", "gpu": {"gpu_type": "cpu"}}
        t0 = time.perf_counter()
        dep = client.post("/v1/deployments", json=body).json()["id"]
        while (row := client.get(f"/v1/deployments/{dep}").json())["status"] != "serving":
            if row["status"] in ("failed", "stopped"):
                raise RuntimeError(f"deployment {row['status']}: {row['error']}")
            time.sleep(0.1)
        say(f"deployment {dep} serving after {time.perf_counter() - t0:.1f} s (create -> serving, cpu pool)")
        sock = data / "deployments" / dep / "serve.sock"
        direct = httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://serve", timeout=300)

        for _ in range(3):  # warm both paths (first-call allocations, connection set-up)
            box_stream(client, dep, args.max_tokens)
            direct_stream(direct, args.max_tokens)
        box, raw = [], []
        for _ in range(args.requests):  # interleaved, so drift on a shared machine hits both alike
            box.append(box_stream(client, dep, args.max_tokens))
            raw.append(direct_stream(direct, args.max_tokens))
        tokens = box[0][2]
        say(f"\nsequential streaming, {args.requests} requests each, max_tokens {args.max_tokens}, {tokens} tokens")
        say(f"{'path':<28}{'TTFT ms':>10}{'total ms':>10}{'tokens/s':>10}")
        for name, rows in (("through the box (HTTP+key)", box), ("serving process (socket)", raw)):
            tps = statistics.median(r[2] / r[1] for r in rows if r[1] > 0)
            say(f"{name:<28}{median_ms([r[0] for r in rows]):>10}{median_ms([r[1] for r in rows]):>10}{tps:>10.1f}")
        ttft_over = median_ms([b[0] - r[0] for b, r in zip(box, raw, strict=True)])
        total_over = median_ms([b[1] - r[1] for b, r in zip(box, raw, strict=True)])
        say(f"proxy overhead (median of paired differences): TTFT {ttft_over} ms, total {total_over} ms")

        def box_call(_: int) -> None:
            body = {"messages": MESSAGES, "max_tokens": 16, "temperature": 0}
            client.post(f"/v1/deployments/{dep}/chat/completions", json=body).raise_for_status()

        def direct_call(_: int) -> None:
            body = {"messages": MESSAGES, "max_tokens": 16, "temperature": 0}
            with direct.stream("POST", "/generate", json=body) as r:
                for _ in r.iter_lines():
                    pass

        say("\n8 concurrent clients, non-streaming, max_tokens 16")
        for name, call in (("through the box", box_call), ("serving process", direct_call)):
            n = 8 * args.concurrent_rounds
            t0 = time.perf_counter()
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(call, range(n)))
            elapsed = time.perf_counter() - t0
            say(f"{name:<28}{n / elapsed:>8.2f} requests/s ({n} requests in {elapsed:.2f} s)")
        client.post(f"/v1/deployments/{dep}/stop")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

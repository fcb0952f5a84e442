"""`texocr serve` under load: 32 concurrent clients, a few hundred requests, with and without dynamic batching.

    PYTHONPATH=src .venv/bin/python bench/serve.py                       # texocr's shipped model, 256 requests
    PYTHONPATH=src .venv/bin/python bench/serve.py --requests 384 --rounds 2 --json runs/serve_bench.json

For each mode (`--max-batch 1`: no batching; `--max-batch N`: batching) a fresh `texocr serve` process is started
on a free loopback port (127.0.0.1 only), warmed up with a few requests, then `--clients` concurrent clients
send `--requests` multipart requests of one image each (TeX renders of `FORMULAS`, in turn) as fast as the
answers come. Every request must be answered 200 (errors are counted and fail the run); latency is per request
as the client sees it, throughput is requests / wall time of the whole load. `--rounds 2` alternates the modes
(A B A B) so that a change of load on a shared machine hits both. The batching gain is throughput(batched) /
throughput(unbatched) within the same run. Bounded: `--max-seconds` per load, after which the run aborts.
Prints a markdown table and the machine's load; writes everything as JSON with `--json`.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

SRC = Path(__file__).resolve().parents[1] / "src"
sys.path.insert(0, str(SRC))  # run from a bare checkout too

FORMULAS = [r"\frac{a+b}{c}", r"x^{2}+y^{2}=z^{2}", r"\sum_{i=1}^{n} i", r"\sqrt{\alpha+\beta}", r"e^{i\pi}+1=0",
            r"\int_{0}^{1} x\,dx", r"a_{n+1}=2a_{n}", r"\lim_{x\to 0}\frac{\sin x}{x}=1", r"f(x)=\log x",
            r"\alpha\beta\gamma", r"(a+b)^{2}", r"\frac{1}{2}+\frac{1}{3}", r"x\in\mathbb{R}", r"A^{-1}B",
            r"\nabla\cdot E=\rho", r"\binom{n}{k}"]


def render_pool() -> list[bytes]:
    from texocr.data.render import get_renderer

    images = get_renderer("auto").render_batch(FORMULAS, dpi=200)
    out = []
    for img in images:
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A `texocr serve` subprocess on a loopback port."""

    def __init__(self, model: str, max_batch: int, wait_ms: float, queue: int) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "texocr", "serve", "--model", model, "--host", "127.0.0.1",
               "--port", str(self.port), "--max-batch", str(max_batch), "--batch-wait-ms", str(wait_ms),
               "--max-queue", str(queue), "--timeout", "300", "--log-level", "warning"]
        env = {**os.environ, "PYTHONPATH": str(SRC)}
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(self.base + "/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"server did not start: {self.proc.stderr.read() if self.proc.stderr else ''}")
            time.sleep(0.3)

    def stats(self) -> dict:
        return httpx.get(self.base + "/health", timeout=5).json()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


async def load(base: str, pool: list[bytes], requests: int, clients: int, max_s: float) -> dict:
    latencies: list[float] = []
    server_ms: list[float] = []  # the server's own total_ms: reading, decoding, queue and model
    queue_ms: list[float] = []
    errors: list[str] = []
    answers: dict[int, set[str]] = {}
    counter = iter(range(requests))

    async def client(http: httpx.AsyncClient) -> None:
        for i in counter:
            k = i % len(pool)
            t0 = time.perf_counter()
            try:
                r = await http.post("/v1/predict", files={"file": (f"f{k}.png", pool[k], "image/png")})
                if r.status_code != 200:
                    errors.append(f"{r.status_code} {r.text[:100]}")
                    continue
                body = r.json()
                answers.setdefault(k, set()).add(body["results"][0]["latex"])
                server_ms.append(body["total_ms"])
                queue_ms.append(body["results"][0]["timing"]["queue_ms"])
            except httpx.HTTPError as e:
                errors.append(f"{type(e).__name__}: {e}")
                continue
            latencies.append(time.perf_counter() - t0)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, timeout=max_s, limits=limits) as http:
        t0 = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(client(http) for _ in range(clients))), max_s)
        wall = time.perf_counter() - t0
    lat = sorted(latencies)
    pct = (lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000) if lat else (lambda q: float("nan"))
    return {"requests": requests, "ok": len(lat), "errors": len(errors), "error_samples": errors[:5],
            "wall_s": round(wall, 2), "throughput_rps": round(len(lat) / wall, 2),
            "p50_ms": round(statistics.median(lat) * 1000, 1) if lat else None, "p99_ms": round(pct(0.99), 1),
            "mean_ms": round(statistics.fmean(lat) * 1000, 1) if lat else None,
            "server_p50_ms": round(statistics.median(server_ms), 1) if server_ms else None,
            "server_p99_ms": round(sorted(server_ms)[int(0.99 * (len(server_ms) - 1))], 1) if server_ms else None,
            "queue_p99_ms": round(sorted(queue_ms)[int(0.99 * (len(queue_ms) - 1))], 1) if queue_ms else None,
            "answers": {FORMULAS[k]: sorted(v) for k, v in sorted(answers.items())}}


def run_mode(args: argparse.Namespace, pool: list[bytes], max_batch: int) -> dict:
    server = Server(args.model, max_batch, args.wait_ms, queue=max(64, 2 * args.clients))
    try:
        for png in pool[:4]:  # the first model calls are slow (allocation, lazy init): not part of the load
            httpx.post(server.base + "/v1/predict", files={"file": ("w.png", png)}, timeout=120)
        before = server.stats()
        row = asyncio.run(load(server.base, pool, args.requests, args.clients, args.max_seconds))
        after = server.stats()
    finally:
        server.stop()
    batches = after["batches"] - before["batches"]
    row.update(max_batch=max_batch, model_calls=batches,
               mean_batch=round((after["images"] - before["images"]) / batches, 2) if batches else 0.0)
    return row


def machine() -> dict:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    import torch

    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default")
    p.add_argument("--requests", type=int, default=256)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--max-batch", type=int, default=16, help="the batched mode's --max-batch")
    p.add_argument("--wait-ms", type=float, default=5.0)
    p.add_argument("--rounds", type=int, default=1, help="alternate the two modes this many times")
    p.add_argument("--max-seconds", type=float, default=600, help="abort a load that takes longer")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()

    pool = render_pool()
    info = {"machine": machine(), "load_before": os.getloadavg(), "args": vars(args)}
    rows = []
    for rnd in range(1, args.rounds + 1):
        for mb in (1, args.max_batch):
            row = run_mode(args, pool, mb)
            row.update(round=rnd, load_after=[round(x, 2) for x in os.getloadavg()])
            rows.append(row)
            print(f"round {rnd} max_batch {mb}: {row['throughput_rps']} req/s, p50 {row['p50_ms']} ms, "
                  f"p99 {row['p99_ms']} ms, errors {row['errors']}, mean batch {row['mean_batch']}", flush=True)
    info["load_after"] = os.getloadavg()
    gains = [b["throughput_rps"] / a["throughput_rps"] for a, b in zip(rows[::2], rows[1::2]) if a["throughput_rps"]]
    info.update(rows=rows, gains=[round(g, 2) for g in gains])

    print(f"\n{info['machine']['cpu']}, {info['machine']['cores']} cores, torch {info['machine']['torch']}; "
          f"load average before {[round(x, 2) for x in info['load_before']]}, after "
          f"{[round(x, 2) for x in info['load_after']]}\n")
    print("| round | batching | requests | errors | throughput (req/s) | p50 (ms) | p99 (ms) | model calls | "
          "mean batch | load after |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        mode = "off (max_batch 1)" if r["max_batch"] == 1 else f"on (max_batch {r['max_batch']})"
        print(f"| {r['round']} | {mode} | {r['requests']} | {r['errors']} | {r['throughput_rps']} | {r['p50_ms']} | "
              f"{r['p99_ms']} | {r['model_calls']} | {r['mean_batch']} | {r['load_after'][0]} |")
    print(f"\nbatching gain (throughput on / off, same round): {', '.join(f'{g:.2f}x' for g in gains)}")
    same = [all(a["answers"].get(f) == b["answers"].get(f) for f in FORMULAS) for a, b in zip(rows[::2], rows[1::2])]
    print(f"same LaTeX with and without batching for all {len(FORMULAS)} formulas: {same}")
    info["same_answers"] = same
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(info, indent=1))
    return 1 if any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())

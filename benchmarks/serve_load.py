"""Loopback load test of the search service (bpr_jax.serve).

Server start-up, the loopback load generator and the report.

Runs C concurrent clients (one keep-alive connection each; a lean asyncio
HTTP/1.1 client by default, httpx.AsyncClient with --client=httpx) posting
/search requests until R requests are done or D seconds have passed, and
reports throughput, latency percentiles, errors, the server's batching and its
resident memory at the start and end (it should stay flat).

Targets:
  --fake                        start `tests/fake_serve.py` (the fake
                                retriever) on a synthetic corpus (no model)
  --model=M --index=I --passages=P
                                start the real server on a real model and index
  --url=http://127.0.0.1:8000   use a server that is already running

Examples:
  python benchmarks/serve_load.py --fake --clients=32 --requests=3000
  python benchmarks/serve_load.py --model=runs/nq/export --index=runs/nq/index \
      --passages=data/psgs_w100.tsv --questions_file=data/nq-test.qa.csv

Writes benchmarks/results/serve_load.json (see --out).
"""
from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import pathlib
import platform
import random
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from typing import Any

import httpx

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "serve_load.json"
LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  target = p.add_mutually_exclusive_group(required=True)
  target.add_argument("--fake", action="store_true", help="Start a server with the fake retriever.")
  target.add_argument("--url", help="Base URL of a running server (loopback only).")
  target.add_argument("--model", help="Exported model folder (starts the real server).")
  p.add_argument("--index", help="Index folder (with --model).")
  p.add_argument("--passages", help="Passage file (with --model; optional with --fake).")
  p.add_argument("--clients", type=int, default=32, help="Concurrent clients (one connection each).")
  p.add_argument("--client", choices=("raw", "httpx"), default="raw",
                 help="raw: a lean keep-alive HTTP/1.1 client; httpx: httpx.AsyncClient (CPU-heavy).")
  p.add_argument("--requests", type=int, default=2000, help="Most requests sent (after warm-up).")
  p.add_argument("--duration", type=float, default=30.0, help="Most seconds of load.")
  p.add_argument("--warmup", type=int, default=64, help="Requests sent first and not measured.")
  p.add_argument("--questions_per_request", type=int, default=1)
  p.add_argument("--k", type=int, default=20)
  p.add_argument("--questions_file", help="Questions: .jsonl (text/question field), .csv/.tsv (first column) or lines.")
  p.add_argument("--fake_passages", type=int, default=100_000, help="Synthetic corpus size for --fake.")
  p.add_argument("--fake_delay_ms", type=float, default=2.0, help="Fake retriever time per call.")
  p.add_argument("--fake_per_question_ms", type=float, default=0.05, help="Fake retriever time per question.")
  p.add_argument("--max_batch", type=int, default=64, help="Server --max_batch (servers started here).")
  p.add_argument("--max_wait_ms", type=float, default=5.0, help="Server --max_wait_ms (servers started here).")
  p.add_argument("--timeout", type=float, default=30.0, help="Per-request timeout in seconds.")
  p.add_argument("--startup_timeout", type=float, default=600.0, help="Seconds to wait for a started server.")
  p.add_argument("--out", default=str(DEFAULT_OUT), help="Where to write the JSON results.")
  p.add_argument("--no_server_warmup", action="store_true",
                 help="Start the real server with --nowarmup (to compare cold start-up).")
  args = p.parse_args(argv)
  if args.model and not (args.index and args.passages):
    p.error("--model needs --index and --passages")
  if args.clients < 1 or args.requests < 1 or args.duration <= 0:
    p.error("--clients, --requests and --duration must be positive")
  if args.url and not any(f"//{h}" in args.url for h in LOOPBACK):
    p.error("--url must be a loopback address (127.0.0.1 / localhost)")
  return args


def load_questions(path: str | None, n: int = 5000) -> list[str]:
  """Questions from a file, or a synthetic varied pool."""
  if not path:
    rng = random.Random(0)
    words = ("who what when where which how why capital river war king album film born wrote "
             "largest population president discovered element planet language song team city").split()
    return [f"{' '.join(rng.choices(words, k=rng.randint(4, 12)))} {i}?" for i in range(n)]
  questions: list[str] = []
  with open(path, encoding="utf-8") as f:
    if path.endswith(".jsonl"):
      for line in f:
        if line.strip():
          obj = json.loads(line)
          questions.append(str(obj.get("text") or obj.get("question") or obj.get("query")))
    elif path.endswith((".csv", ".tsv")):
      for row in csv.reader(f, delimiter="\t" if path.endswith(".tsv") else ","):
        if row and row[0].strip():
          questions.append(row[0])
    else:
      questions = [line.strip() for line in f if line.strip()]
  if not questions:
    raise SystemExit(f"no questions in {path}")
  return questions


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _write_fake_corpus(path: pathlib.Path, n: int) -> None:
  rng = random.Random(1)
  words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho".split()
  with open(path, "w", encoding="utf-8") as f:
    f.write("id\ttext\ttitle\n")
    for i in range(n):
      text = " ".join(rng.choices(words, k=100))
      f.write(f"{i + 1}\t{text}\tPassage {i + 1}\n")


def _proc_rss(pid: int) -> int | None:
  try:
    with open(f"/proc/{pid}/statm") as f:
      return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
  except (OSError, ValueError, IndexError):
    return None


class Server:
  """A server subprocess on a free loopback port (or nothing, for --url)."""

  def __init__(self, args: argparse.Namespace, tmp: pathlib.Path):
    self.proc: subprocess.Popen[bytes] | None = None
    self.log_path = tmp / "server.log"
    if args.url:
      self.url = args.url.rstrip("/")
      return
    port = _free_port()
    self.url = f"http://127.0.0.1:{port}"
    common = ["--host=127.0.0.1", f"--port={port}", f"--max_batch={args.max_batch}",
              f"--max_wait_ms={args.max_wait_ms}", "--log_level=warning"]
    if args.fake:
      passages = args.passages
      if not passages:
        passages = str(tmp / "fake_passages.tsv")
        _write_fake_corpus(pathlib.Path(passages), args.fake_passages)
      cmd = [sys.executable, "-m", "tests.fake_serve", *common, f"--passages={passages}",
             f"--passage_cache_dir={tmp / 'cache'}", f"--delay_ms={args.fake_delay_ms}",
             f"--per_question_ms={args.fake_per_question_ms}"]
    else:
      cmd = [sys.executable, "-m", "bpr_jax.serve", *common, f"--model={args.model}", f"--index={args.index}",
             f"--passages={args.passages}"]
      if args.no_server_warmup:
        cmd.append("--nowarmup")
    self._log = open(self.log_path, "wb")
    self.proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=self._log, stderr=subprocess.STDOUT)

  def wait_ready(self, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
      if self.proc is not None and self.proc.poll() is not None:
        raise SystemExit(f"server exited with {self.proc.returncode}:\n{self.log_path.read_text()[-4000:]}")
      try:
        r = httpx.get(f"{self.url}/health", timeout=2)
        if r.status_code == 200:
          return r.json()
      except httpx.HTTPError:
        pass
      if time.monotonic() > deadline:
        raise SystemExit(f"server at {self.url} not ready after {timeout:.0f}s")
      time.sleep(0.25)

  def health(self) -> dict[str, Any]:
    return httpx.get(f"{self.url}/health", timeout=10).json()

  def rss(self) -> int | None:
    if self.proc is not None:
      return _proc_rss(self.proc.pid)
    return self.health().get("rss_bytes")

  def stop(self) -> None:
    if self.proc is None:
      return
    self.proc.terminate()
    try:
      self.proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
      self.proc.kill()
      self.proc.wait()
    self._log.close()


class RawHTTPClient:
  """A minimal HTTP/1.1 keep-alive client (one connection), for loopback load.

  httpx.AsyncClient costs ~5 ms of client CPU per request, so on a small
  machine it measures itself rather than the server; this client does the
  least work needed: write the request, read the headers and exactly
  Content-Length bytes of body.
  """

  def __init__(self, url: str, timeout: float):
    parts = urllib.parse.urlsplit(url)
    self.host = parts.hostname or "127.0.0.1"
    self.port = parts.port or 80
    self.timeout = timeout
    self._reader: asyncio.StreamReader | None = None
    self._writer: asyncio.StreamWriter | None = None

  async def post_json(self, path: str, payload: Any) -> tuple[int, bytes]:
    body = json.dumps(payload).encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    try:
      return await asyncio.wait_for(self._roundtrip(head + body), self.timeout)
    except BaseException:
      await self.close()  # The connection state is unknown; start afresh.
      raise

  async def _roundtrip(self, request: bytes) -> tuple[int, bytes]:
    if self._writer is None:
      self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
    assert self._reader is not None
    self._writer.write(request)
    header = await self._reader.readuntil(b"\r\n\r\n")
    lines = header.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    fields = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
    if "content-length" not in fields:
      raise ValueError("response without Content-Length")
    data = await self._reader.readexactly(int(fields["content-length"]))
    if fields.get("connection", "").lower() == "close":
      await self.close()
    return status, data

  async def close(self) -> None:
    writer, self._writer, self._reader = self._writer, None, None
    if writer is not None:
      writer.close()
      try:
        await writer.wait_closed()
      except (OSError, ConnectionError):
        pass


async def run_load(url: str, questions: list[str], args: argparse.Namespace, count: int,
                   duration: float) -> dict[str, Any]:
  """Sends up to `count` requests from `args.clients` clients for at most `duration` s."""
  latencies: list[float] = []
  by_send: list[tuple[int, float]] = []  # (send order, latency) of the successful requests
  errors: dict[str, int] = {}
  sent = 0
  deadline = time.monotonic() + duration
  rng = random.Random(2)

  def body() -> dict[str, Any]:
    return {"questions": rng.sample(questions, min(args.questions_per_request, len(questions))), "k": args.k}

  def record(t0: float, status: int, data: bytes, n_questions: int, order: int = 0) -> None:
    try:
      ok = status == 200 and len(json.loads(data)["results"]) == n_questions
    except (ValueError, KeyError, TypeError):
      ok = False
    if ok:
      latencies.append(time.perf_counter() - t0)
      by_send.append((order, latencies[-1]))
    else:
      key = f"http_{status}" if status != 200 else "bad_body"
      errors[key] = errors.get(key, 0) + 1

  def failed(e: BaseException) -> None:
    key = type(e).__name__
    errors[key] = errors.get(key, 0) + 1

  async def raw_client() -> None:
    nonlocal sent
    client = RawHTTPClient(url, args.timeout)
    try:
      while sent < count and time.monotonic() < deadline:
        sent += 1
        order = sent
        payload = body()
        t0 = time.perf_counter()
        try:
          status, data = await client.post_json("/search", payload)
        except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.TimeoutError) as e:
          failed(e)
          continue
        record(t0, status, data, len(payload["questions"]), order)
    finally:
      await client.close()

  async def httpx_client(ac: httpx.AsyncClient) -> None:
    nonlocal sent
    while sent < count and time.monotonic() < deadline:
      sent += 1
      order = sent
      payload = body()
      t0 = time.perf_counter()
      try:
        r = await ac.post(f"{url}/search", json=payload)
      except httpx.HTTPError as e:
        failed(e)
        continue
      record(t0, r.status_code, r.content, len(payload["questions"]), order)

  started = time.perf_counter()
  if args.client == "raw":
    await asyncio.gather(*(raw_client() for _ in range(args.clients)))
  else:
    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
    async with httpx.AsyncClient(timeout=args.timeout, limits=limits) as ac:
      await asyncio.gather(*(httpx_client(ac) for _ in range(args.clients)))
  wall = time.perf_counter() - started
  in_order = [lat for _, lat in sorted(by_send)]
  return {"latencies": latencies, "in_send_order": in_order, "errors": errors, "sent": sent, "wall_s": wall}


def percentile(values: list[float], q: float) -> float:
  if not values:
    return float("nan")
  s = sorted(values)
  pos = (len(s) - 1) * q / 100.0
  lo = int(pos)
  hi = min(lo + 1, len(s) - 1)
  return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def main(argv: list[str] | None = None) -> dict[str, Any]:
  args = parse_args(argv)
  questions = load_questions(args.questions_file)
  with tempfile.TemporaryDirectory(prefix="serve_load_") as tmp_name:
    server = Server(args, pathlib.Path(tmp_name))
    try:
      t0 = time.monotonic()
      health = server.wait_ready(args.startup_timeout)
      startup_s = time.monotonic() - t0
      rss_start = server.rss()
      # The first requests after start-up next to later ones: with the start-up warm-up (the
      # server's default) the first 20 are as fast as the next 200.
      first = asyncio.run(run_load(server.url, questions, args, 220, args.duration))
      if args.warmup:
        asyncio.run(run_load(server.url, questions, args, args.warmup, args.duration))
      rss_warm = server.rss()
      before = server.health()
      res = asyncio.run(run_load(server.url, questions, args, args.requests, args.duration))
      after = server.health()
      rss_end = server.rss()
    finally:
      server.stop()
  lat_ms = [x * 1000 for x in res["latencies"]]
  first_ms = [x * 1000 for x in first["in_send_order"]]
  calls = after["search_calls"] - before["search_calls"]
  served = after["questions_served"] - before["questions_served"]
  n_err = sum(res["errors"].values())
  mib = 1024 * 1024
  result = {
      "target": "fake" if args.fake else ("url" if args.url else "model"),
      "url": server.url if args.url else "127.0.0.1 (started here)",
      "passages": health.get("passages"),
      "clients": args.clients,
      "client": args.client,
      "questions_per_request": args.questions_per_request,
      "k": args.k,
      "requests_sent": res["sent"],
      "requests_ok": len(lat_ms),
      "errors": n_err,
      "error_kinds": res["errors"],
      "wall_s": round(res["wall_s"], 3),
      "throughput_rps": round(len(lat_ms) / res["wall_s"], 1) if res["wall_s"] else 0.0,
      "throughput_qps": round(len(lat_ms) * args.questions_per_request / res["wall_s"], 1) if res["wall_s"] else 0.0,
      "latency_ms": {"p50": round(percentile(lat_ms, 50), 2), "p90": round(percentile(lat_ms, 90), 2),
                     "p99": round(percentile(lat_ms, 99), 2), "max": round(max(lat_ms), 2) if lat_ms else None,
                     "mean": round(sum(lat_ms) / len(lat_ms), 2) if lat_ms else None},
      "after_startup_ms": {"first_20_p50": round(percentile(first_ms[:20], 50), 2),
                           "next_200_p50": round(percentile(first_ms[20:220], 50), 2),
                           "first_request": round(first_ms[0], 2) if first_ms else None,
                           "errors": sum(first["errors"].values())},
      "server_warmup": not args.no_server_warmup,
      "server_search_calls": calls,
      "server_mean_batch": round(served / calls, 2) if calls else 0.0,
      "server_rss_mib": {"start": _mib(rss_start, mib), "after_warmup": _mib(rss_warm, mib),
                         "end": _mib(rss_end, mib),
                         "growth_after_warmup": _mib(rss_end - rss_warm, mib) if rss_end and rss_warm else None},
      "server_startup_s": round(startup_s, 2),
      "settings": {"max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms,
                   "fake_delay_ms": args.fake_delay_ms if args.fake else None,
                   "fake_per_question_ms": args.fake_per_question_ms if args.fake else None,
                   "requests_limit": args.requests, "duration_limit_s": args.duration, "warmup": args.warmup},
      "host": {"python": platform.python_version(), "cpus": os.cpu_count(), "machine": platform.machine()},
      "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
  }
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(result, indent=2) + "\n")
  print(f"{result['requests_ok']} ok / {res['sent']} sent, {n_err} errors, {result['wall_s']} s, "
        f"{result['throughput_rps']} req/s ({result['throughput_qps']} questions/s)")
  print(f"latency ms: p50 {result['latency_ms']['p50']}  p90 {result['latency_ms']['p90']}  "
        f"p99 {result['latency_ms']['p99']}  max {result['latency_ms']['max']}")
  print(f"after start-up: p50 of the first 20 requests {result['after_startup_ms']['first_20_p50']} ms, "
        f"of the next 200 {result['after_startup_ms']['next_200_p50']} ms (first request "
        f"{result['after_startup_ms']['first_request']} ms)")
  print(f"server: {calls} search calls, mean batch {result['server_mean_batch']}; RSS MiB start "
        f"{result['server_rss_mib']['start']} -> warm {result['server_rss_mib']['after_warmup']} -> end "
        f"{result['server_rss_mib']['end']}")
  print(f"wrote {out}")
  return result


def _mib(value: int | None, mib: int) -> float | None:
  return round(value / mib, 1) if value is not None else None


if __name__ == "__main__":
  main()

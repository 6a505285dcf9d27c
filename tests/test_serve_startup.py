"""The service's start-up: one-line errors before anything slow, the port bound first, answering
at once while the warm-up runs in the background, the persistent compilation cache, and the
passage offset index kept out of the user's folders."""
from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient

from bpr_jax.passage_store import PassageFormatError, PassageStore
from bpr_jax.serve import create_app
from tests.fake_serve import FakeRetriever

REPO = pathlib.Path(__file__).resolve().parents[1]
WORDS = ["who", "what", "wrote", "is", "the", "a", "binary", "passage", "retriever", "hash",
         "code", "paper", "title", "text", "about", "retrieval", "fast", "search"]
N_PASSAGES = 12


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def pieces(tmp_path_factory) -> dict[str, pathlib.Path]:
  """A tiny exported model, a flat index of its codes and the passage file (TSV)."""
  from flax import nnx

  from bpr_jax import export_format, exported_model
  from bpr_jax.codes import pack_codes
  from bpr_jax.index import build_index, save_index
  from bpr_jax.models.bert import BertConfig, BertEncoder
  from bpr_jax.tokenization import Tokenizer

  root = tmp_path_factory.mktemp("pieces")
  vocab = root / "vocab"
  vocab.mkdir()
  (vocab / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS) + "\n")
  tokenizer = Tokenizer.from_dir(vocab)
  config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1,
                      num_attention_heads=2, intermediate_size=64, max_position_embeddings=32)
  encoder = BertEncoder(config, rngs=nnx.Rngs(0))
  settings = {"mode": "bpr", "pooling": "cls", "question_max_length": 8, "passage_max_length": 16,
              "code_bits": 32, "hidden_size": 32, "shared_encoder": True}
  export_format.save_exported(encoder, encoder, tokenizer, settings, root / "model")
  titles = [f"{WORDS[i % 18]} title" for i in range(N_PASSAGES)]
  texts = [f"{WORDS[(3 * i) % 18]} {WORDS[(5 * i) % 18]} text" for i in range(N_PASSAGES)]
  ids = [f"p{i}" for i in range(N_PASSAGES)]
  (root / "psgs.tsv").write_text("id\ttext\ttitle\n" + "".join(
      f"{i}\t{x}\t{t}\n" for i, x, t in zip(ids, texts, titles)))
  model = exported_model.load_exported(root / "model")
  codes = pack_codes(model.encode_passages(titles, texts))
  save_index(root / "index", build_index(codes, "flat"), codes, ids)
  return {"model": root / "model", "index": root / "index", "passages": root / "psgs.tsv"}


def _serve_cmd(pieces: dict[str, pathlib.Path], port: int, *extra: str) -> list[str]:
  return [sys.executable, "-m", "bpr_jax.serve", f"--model={pieces['model']}",
          f"--index={pieces['index']}", f"--passages={pieces['passages']}", "--host=127.0.0.1",
          f"--port={port}", *extra]


def _env(tmp_path: pathlib.Path) -> dict[str, str]:
  return dict(os.environ, BPR_CACHE_DIR=str(tmp_path / "bpr_cache"))


def _one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
  assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
  assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
  lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
  assert len(lines) == 1, proc.stderr
  for needle in needles:
    assert needle in lines[0], lines[0]
  return lines[0]


def test_port_in_use_fails_at_once_before_anything_loads(pieces, tmp_path) -> None:
  with socket.socket() as held:
    held.bind(("127.0.0.1", 0))
    held.listen()
    port = held.getsockname()[1]
    t0 = time.monotonic()
    proc = subprocess.run(_serve_cmd(pieces, port), cwd=REPO, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - t0
  _one_line_error(proc, f"port {port} on 127.0.0.1 is in use")
  assert elapsed < 30, elapsed  # no model load, no warm-up (the python start-up only)
  assert not (tmp_path / "bpr_cache").exists()  # nothing was built


@pytest.mark.parametrize("case", ["missing_index", "missing_model", "missing_passages",
                                  "count", "mismatch"])
def test_bad_pieces_are_one_line_errors(pieces, tmp_path, case) -> None:
  args = dict(pieces)
  if case == "missing_index":
    args["index"] = tmp_path / "no_index"
    needles = ["--index", "no_index"]
  elif case == "missing_model":
    args["model"] = tmp_path / "no_model"
    needles = ["--model", "no_model"]
  elif case == "missing_passages":
    args["passages"] = tmp_path / "none.tsv"
    needles = ["--passages", "none.tsv"]
  elif case == "count":
    lines = pieces["passages"].read_text().splitlines(keepends=True)
    args["passages"] = tmp_path / "short.tsv"
    args["passages"].write_text("".join(lines[:-1]))
    needles = [f"has {N_PASSAGES - 1} passages", f"has {N_PASSAGES}"]
  else:  # the index records other passages than the ones served
    import shutil
    args["index"] = tmp_path / "index"
    shutil.copytree(pieces["index"], args["index"])
    meta = json.loads((args["index"] / "meta.json").read_text())
    meta["inputs"] = {"passages": {"path": "/elsewhere/psgs.tsv", "bytes": 1, "sha256": "0" * 64}}
    (args["index"] / "meta.json").write_text(json.dumps(meta))
    needles = ["do not belong together", "--allow_mismatch"]
  proc = subprocess.run(_serve_cmd(args, _free_port()), cwd=REPO, env=_env(tmp_path),
                        capture_output=True, text=True, timeout=300)
  _one_line_error(proc, *needles)


def _get(url: str) -> tuple[int, dict[str, Any]]:
  try:
    with urllib.request.urlopen(url, timeout=10) as r:
      return r.status, json.loads(r.read())
  except urllib.error.HTTPError as e:
    return e.code, json.loads(e.read())


def test_serves_at_once_and_fills_the_compilation_cache(pieces, tmp_path) -> None:
  port = _free_port()
  cache = tmp_path / "jax_cache"
  cmd = _serve_cmd(pieces, port, f"--compilation_cache_dir={cache}", "--max_batch=4", "--max_k=8")
  proc = subprocess.Popen(cmd, cwd=REPO, env=_env(tmp_path), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  try:
    deadline = time.monotonic() + 240
    statuses = []
    while True:
      assert proc.poll() is None, proc.stdout.read()[-3000:]
      try:
        code, body = _get(f"http://127.0.0.1:{port}/health")
        statuses.append((code, body["status"]))
        if code == 200:
          break
        assert (code, body["status"]) == (503, "warming_up") and body["shapes"] >= body["compiled"]
      except OSError:  # not answering yet (loading), or refused
        pass
      assert time.monotonic() < deadline, statuses
      time.sleep(0.05)
    assert body["status"] == "ok" and body["compiled"] == body["shapes"] > 0, body
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/search", data=json.dumps({"questions": ["who wrote the paper"],
                                                            "k": 3}).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as r:
      hits = json.loads(r.read())["results"][0]
    assert len(hits) == 3 and all(h["title"] and h["text"] for h in hits)
    assert any(p.is_file() for p in cache.rglob("*")), "the persistent compilation cache is empty"
    # The passage offset index went to $BPR_CACHE_DIR/passages, not beside the passage file.
    assert list(pieces["passages"].parent.glob("*.pidx")) == []
    assert list((tmp_path / "bpr_cache" / "passages").glob("*.pidx"))
  finally:
    proc.terminate()
    try:
      proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
      proc.kill()
      proc.wait()


@pytest.fixture()
def store(tmp_path: pathlib.Path) -> Iterator[PassageStore]:
  lines = ["id\ttext\ttitle"] + [f"p{i}\tText number {i}\tTitle {i}" for i in range(30)]
  path = tmp_path / "psgs.tsv"
  path.write_text("\n".join(lines) + "\n", encoding="utf-8")
  with PassageStore(path, cache_dir=tmp_path / "cache") as s:
    yield s


def test_health_reports_the_warmup_and_search_waits_for_it(store) -> None:
  gate = threading.Event()

  def slow_warmup(progress) -> None:
    progress(1, 3)
    assert gate.wait(30)
    progress(3, 3)

  fake = FakeRetriever.from_store(store)
  app = create_app(fake, store, max_wait_ms=1, warmup=slow_warmup)
  with TestClient(app) as client:
    health = client.get("/health")
    assert health.status_code == 503 and int(health.headers["Retry-After"]) >= 1
    body = health.json()
    assert (body["status"], body["compiled"], body["shapes"]) == ("warming_up", 1, 3)
    answer: dict[str, Any] = {}
    waiter = threading.Thread(target=lambda: answer.update(
        r=client.post("/search", json={"questions": ["q"], "k": 2})))
    waiter.start()
    time.sleep(0.3)
    assert not answer and fake.calls == []  # the search waits for the warm-up
    gate.set()
    waiter.join(30)
    assert answer["r"].status_code == 200 and len(answer["r"].json()["results"][0]) == 2
    health = client.get("/health")
    assert health.status_code == 200
    assert (health.json()["status"], health.json()["compiled"]) == ("ok", 3)


def test_search_during_a_long_warmup_answers_503_with_retry_after(store) -> None:
  gate = threading.Event()
  app = create_app(FakeRetriever.from_store(store), store, warmup=lambda progress: gate.wait(30),
                   warmup_wait_s=0.2)
  try:
    with TestClient(app) as client:
      r = client.post("/search", json={"questions": ["q"], "k": 2})
      assert r.status_code == 503 and "warming up" in r.json()["detail"]
      assert int(r.headers["Retry-After"]) >= 1
  finally:
    gate.set()


def test_failed_warmup_is_reported_and_serving_goes_on(store) -> None:
  def broken(progress) -> None:
    raise RuntimeError("no compiler")

  with TestClient(create_app(FakeRetriever.from_store(store), store, warmup=broken)) as client:
    deadline = time.monotonic() + 10
    while client.get("/health").status_code != 200:
      assert time.monotonic() < deadline
      time.sleep(0.02)
    body = client.get("/health").json()
    assert body["status"] == "warmup_failed" and "no compiler" in body["warmup"]["error"]
    assert client.post("/search", json={"questions": ["q"], "k": 1}).status_code == 200


def test_warmup_shapes_are_few_and_cover_every_request() -> None:
  from bpr_jax.serve import (PaddedQuestions, k_bucket, k_buckets, question_batch_sizes,
                             question_bucket)
  assert question_batch_sizes(64) == [1, 4, 16, 64]
  assert question_batch_sizes(8) == [1, 4, 8] and question_batch_sizes(1000) == [1, 4, 16, 64]
  assert k_buckets(1000) == [32, 256, 1000]
  assert {k_bucket(k, 1000) for k in range(1, 1001)} == set(k_buckets(1000))
  assert {question_bucket(n, question_batch_sizes(64)) for n in range(1, 65)} == {1, 4, 16, 64}

  class Model:
    settings = {"code_bits": 4}
    calls: list[int] = []

    def encode_questions(self, texts, batch_size=64):
      self.calls.append(len(texts))
      return np.stack([np.full(4, float(len(t))) for t in texts])

  padded = PaddedQuestions(Model(), question_batch_sizes(64))
  out = padded.encode_questions(["a", "bb", "ccc"])
  assert out.shape == (3, 4) and out[:, 0].tolist() == [1.0, 2.0, 3.0] and Model.calls == [4]
  assert padded.settings == {"code_bits": 4}


def test_offset_index_is_not_written_beside_the_passage_file(tmp_path, monkeypatch) -> None:
  monkeypatch.delenv("BPR_CACHE_DIR", raising=False)
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  first, second = tmp_path / "a" / "psgs.tsv", tmp_path / "b" / "psgs.tsv"
  for i, path in enumerate((first, second)):
    path.parent.mkdir()
    path.write_text(f"x{i}\ttext\ttitle\n")
  stores = [PassageStore(first), PassageStore(second)]
  for path in (first, second):
    assert [p.name for p in path.parent.iterdir()] == ["psgs.tsv"]
  cache = tmp_path / "home" / ".cache" / "bpr_jax" / "passages"
  assert {s.index_dir.parent for s in stores} == {cache}
  assert stores[0].index_dir != stores[1].index_dir  # same name, other folder: no collision
  assert [s.id_at(0) for s in stores] == ["x0", "x1"]


def test_duplicate_ids_name_the_file_the_id_and_both_lines(tmp_path) -> None:
  path = tmp_path / "dup.tsv"
  path.write_text("id\ttext\ttitle\na\tone\tA\nb\ttwo\tB\na\tthree\tC\n")
  with pytest.raises(PassageFormatError, match=r"dup.tsv: duplicate passage id 'a' on lines 2 and 4"):
    PassageStore(path, cache_dir=tmp_path / "cache")
  assert list((tmp_path / "cache").iterdir()) == []  # no half-built index left behind

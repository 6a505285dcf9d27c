"""The whole chain from the README's commands: train (tiny) -> export -> encode -> index ->
evaluate -> serve, each as its own process, on the built-in tiny data."""
import csv
import hashlib
import json
import os
import pathlib
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def run(*args, timeout=600):
  proc = subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True,
                        timeout=timeout, env=os.environ.copy())
  assert proc.returncode == 0, f"{' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
  return proc


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
  root = tmp_path_factory.mktemp("chain")
  work, export, codes, index = root / "work", root / "export", root / "codes", root / "index"
  run("bpr_jax.main", "--config=configs/tiny.py", f"--workdir={work}", "--config.eval_every=0")
  passages = work / "tiny_data" / "psgs.tsv"
  qas = work / "tiny_data" / "qas.csv"
  run("bpr_jax.export", f"--workdir={work}", f"--output={export}")
  run("bpr_jax.encode", f"--model={export}", f"--passages={passages}", f"--output={codes}", "--save_float")
  run("bpr_jax.index", f"--codes={codes}", "--kind=flat", f"--output={index}")
  results = root / "results.json"
  run("bpr_jax.evaluate", f"--model={export}", f"--index={index}", f"--passages={passages}", f"--qa={qas}",
      f"--output={results}", "--k=1,5,20", "--l=100", "--num_single=5")
  return {"root": root, "export": export, "codes": codes, "index": index, "passages": passages,
          "qas": qas, "results": json.loads(results.read_text())}


def chance_recall(qas: pathlib.Path, num_passages: int, k: int) -> float:
  """Expected answer recall@k of a random ranking: each answer names one passage's entity."""
  import ast
  from math import comb
  total, n = 0.0, 0
  for line in qas.read_text().splitlines():
    answers = ast.literal_eval(line.split("\t")[1])
    total += 1 - comb(num_passages - len(answers), k) / comb(num_passages, k)
    n += 1
  return total / n


def test_chain_outputs(chain):
  export, codes, index = chain["export"], chain["codes"], chain["index"]
  assert json.loads((export / "bpr.json").read_text())["code_bits"] == 64
  manifest = json.loads((codes / "manifest.json").read_text())
  # Oracles: the passage file itself, hashlib over the written files, numpy's sign of the saved floats.
  with open(chain["passages"], newline="") as f:
    tsv_ids = [row[0] for row in csv.reader(f, delimiter="\t")][1:]  # header: id, text, title
  assert len(tsv_ids) == 400
  assert manifest["num_passages"] == len(tsv_ids) and manifest["code_bits"] == 64
  for name in ("codes.npy", "ids.npy", "embeddings.npy"):
    data = (codes / name).read_bytes()
    record = manifest["files"][name]
    assert (record["sha256"], record["bytes"]) == (hashlib.sha256(data).hexdigest(), len(data)), name
  packed, emb = np.load(codes / "codes.npy"), np.load(codes / "embeddings.npy")
  assert packed.dtype == np.uint8 and packed.shape == (400, 8) and emb.shape == (400, 64)
  np.testing.assert_array_equal(packed, np.packbits(emb >= 0, axis=1))  # sign(0) = +1, first bit high
  assert sorted(str(i) for i in np.load(codes / "ids.npy").tolist()) == sorted(tsv_ids)
  assert (index / "index.faiss").is_file() and (index / "codes.npy").is_file()
  np.testing.assert_array_equal(np.load(index / "codes.npy"), packed)  # flat index: rows in encode order


def test_chain_evaluation_rows(chain):
  results = chain["results"]  # {"inputs", "rows"} (provenance-recording evaluate) or the bare row list
  rows = {row["name"]: row for row in (results["rows"] if isinstance(results, dict) else results)}
  assert rows, chain["results"]
  two_stage = next(row for name, row in rows.items() if name.endswith("flat") and "no-" not in name)
  for key in ("recall@1", "recall@5", "recall@20", "bytes_per_passage", "index_bytes", "ms_per_query"):
    assert key in two_stage, (key, two_stage)
  assert two_stage["bytes_per_passage"] == 8  # 64-bit codes: 8 bytes per passage
  # the index's memory: the faiss file (400 codes of 8 bytes + header) plus the ids array
  faiss_bytes = (chain["index"] / "index.faiss").stat().st_size
  assert 400 * 8 <= faiss_bytes <= 400 * 8 + 1024
  assert two_stage["index_bytes"] == faiss_bytes + np.load(chain["index"] / "ids.npy").nbytes
  chance = chance_recall(chain["qas"], 400, 20)
  assert two_stage["recall@20"] > 2 * chance, (two_stage, chance)


def test_chain_serves_the_exported_model_and_index(chain):
  port = free_port()
  cmd = [sys.executable, "-m", "bpr_jax.serve", f"--model={chain['export']}", f"--index={chain['index']}",
         f"--passages={chain['passages']}", "--host=127.0.0.1", f"--port={port}"]
  proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  try:
    deadline = time.time() + 180
    while True:
      assert proc.poll() is None, proc.stdout.read()[-3000:]
      try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
          if r.status == 200:
            break
      except OSError:
        pass
      assert time.time() < deadline, "server did not come up"
      time.sleep(0.5)
    body = json.dumps({"questions": ["who is the fox from paris ?", "which goat likes to eat rice ?"], "k": 5})
    request = urllib.request.Request(f"http://127.0.0.1:{port}/search", data=body.encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as r:
      results = json.loads(r.read())["results"]
    assert len(results) == 2 and all(len(hits) == 5 for hits in results)
    assert all(hit["title"] and hit["text"] and isinstance(hit["score"], float) for hits in results for hit in hits)
    scores = [hit["score"] for hit in results[0]]
    assert scores == sorted(scores, reverse=True)
  finally:
    proc.terminate()
    try:
      proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
      proc.kill()

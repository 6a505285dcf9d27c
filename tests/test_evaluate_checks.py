"""The checks of the index and evaluate commands and of Retriever (issue #22): pieces that do
not belong together, bad flags and question files refused before the model loads, provenance of
indexes and results, no passage caches beside the user's files."""
import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from bpr_jax import evaluate as ev
from bpr_jax import io, provenance
from bpr_jax.data.dpr import iter_qas
from bpr_jax.data.examples import DataError
from bpr_jax.index import BinaryIndex, build_from_codes_dir
from bpr_jax.index.codes_dir import CODES_FORMAT
from bpr_jax.index.ids import normalize_ids
from bpr_jax.search import Retriever
from tests.test_evaluate import _tiny_model

N = 40
BITS = 32
ENV = dict(os.environ, JAX_PLATFORMS="cpu")


def _write_codes(path, codes, ids, model_dir, passages):
  """An encode output folder whose manifest records the model and passages (as encode does)."""
  path.mkdir(parents=True, exist_ok=True)
  io.atomic_save_npy(path / "codes.npy", codes)
  io.atomic_save_npy(path / "ids.npy", normalize_ids(ids))
  io.atomic_write_json(path / "manifest.json", {
      "format": CODES_FORMAT, "num_passages": len(codes), "code_bits": codes.shape[1] * 8,
      "files": {n: io.file_record(path / n) for n in ("codes.npy", "ids.npy")},
      provenance.INPUTS: {"model": provenance.model_fingerprint(model_dir),
                          "passages": provenance.fingerprint_passages(passages)}})


@pytest.fixture(scope="module")
def pieces(tmp_path_factory, minilm_dir):
  """Model A (the index's), model B (another), passages P, questions Q, codes C, index I."""
  root = tmp_path_factory.mktemp("checks")
  model_a = _tiny_model(root / "A", minilm_dir, hidden=BITS)
  model_b = root / "B"
  shutil.copytree(model_a, model_b)
  settings = json.loads((model_b / "bpr.json").read_text())
  settings["passage_max_length"] = 30
  (model_b / "bpr.json").write_text(json.dumps(settings))
  data = root / "data"
  data.mkdir()
  ids = [str(100 + i) for i in range(N)]
  passages = data / "psgs.tsv"
  passages.write_text("id\ttext\ttitle\n" + "".join(
      f"{p}\tpassage number {i} holds word{i}\tTitle {i}\n" for i, p in enumerate(ids)))
  qa = data / "qa.csv"
  qa.write_text("".join(f"which passage holds word{i}?\t['word{i}']\n" for i in range(0, N, 7)))
  rng = np.random.default_rng(0)
  codes = rng.integers(0, 256, (N, BITS // 8), dtype=np.uint8)
  _write_codes(root / "C", codes, ids, model_a, passages)
  build_from_codes_dir(root / "C", root / "I", "flat")
  return {"root": root, "A": model_a, "B": model_b, "P": passages, "Q": qa, "C": root / "C",
          "I": root / "I", "codes": codes, "ids": ids}


# One subprocess runs evaluate's main on several flag sets, with the model loader and the
# evaluation replaced by functions that fail: a check that passes would reach them.
_HARNESS = """
import json, sys
from absl import flags
from bpr_jax import evaluate as ev, exported_model

def _reached(*args, **kwargs):
  raise AssertionError("REACHED: the model was loaded or questions encoded")

exported_model.load_exported = _reached
ev.run_evaluation = _reached
ev._define_flags()
out = []
for args in json.loads(sys.argv[1]):
  flags.FLAGS.unparse_flags()
  try:
    flags.FLAGS(["evaluate"] + args)
    ev.main(["evaluate"])
    out.append("ok")
  except AssertionError as e:
    out.append(str(e))
  except Exception as e:  # pylint: disable=broad-except
    out.append(type(e).__name__ + ": " + str(e))
print("RESULTS " + json.dumps(out))
"""


def _early(pieces, cases):
  """The error (or REACHED) of each flag set, run through evaluate's main without a model."""
  res = subprocess.run([sys.executable, "-c", _HARNESS, json.dumps(cases)], capture_output=True,
                       text=True, env=ENV, check=False, cwd=pathlib.Path(__file__).parents[1])
  lines = [l for l in res.stdout.splitlines() if l.startswith("RESULTS ")]
  assert lines, res.stderr[-3000:]
  return json.loads(lines[-1][len("RESULTS "):])


def _base(pieces, tmp, model="A", **extra):
  args = {"model": pieces[model], "index": pieces["I"], "passages": pieces["P"], "qa": pieces["Q"],
          "output": tmp / "r.json", "k": "1,5", "l": 10, "baselines": "", "num_single": 1}
  args.update(extra)
  return [f"--{k}={v}" for k, v in args.items() if v is not None]


def test_bad_flags_and_files_refused_before_the_model_loads(pieces, tmp_path):
  header = tmp_path / "header.csv"
  header.write_text("question\tanswers\nwhat?\t['a']\n")
  names = tmp_path / "names.csv"
  names.write_text("what?\t['a']\nwho?\t[Paris]\n")
  cases = {
      "l_below_k": _base(pieces, tmp_path, k="1,20", l=5),
      "l_zero": _base(pieces, tmp_path, l=0),
      "k_abc": _base(pieces, tmp_path, k="1,abc"),
      "k_zero": _base(pieces, tmp_path, k="0,5"),
      "baseline_typo": _base(pieces, tmp_path, baselines="flat_ip,hnws"),
      "baseline_bits": _base(pieces, tmp_path, baselines="lsh", baseline_bits="12"),
      "no_questions": _base(pieces, tmp_path, qa=None),
      "missing_qa": _base(pieces, tmp_path, qa=tmp_path / "nope.csv"),
      "missing_passages": _base(pieces, tmp_path, passages=tmp_path / "nope.tsv"),
      "qa_header": _base(pieces, tmp_path, qa=header),
      "qa_names": _base(pieces, tmp_path, qa=names),
      "mismatch": _base(pieces, tmp_path, model="B"),
      "good": _base(pieces, tmp_path),
  }
  got = dict(zip(cases, _early(pieces, list(cases.values()))))
  assert got["good"].startswith("REACHED"), got["good"]  # the checks let good flags through
  for name, message in got.items():
    if name != "good":
      assert not message.startswith("REACHED") and "\n" not in message, (name, message)
  assert "--l=5" in got["l_below_k"] and "20" in got["l_below_k"]
  assert "--l" in got["l_zero"]
  assert "--k" in got["k_abc"] and "'abc'" in got["k_abc"]
  assert "--k" in got["k_zero"]
  assert "--baselines" in got["baseline_typo"] and "'hnws'" in got["baseline_typo"]
  assert "--baseline_bits" in got["baseline_bits"] and "12" in got["baseline_bits"]
  assert "--qa or --beir_dir" in got["no_questions"]
  assert "--qa=" in got["missing_qa"] and "nope.csv" in got["missing_qa"]
  assert "--passages=" in got["missing_passages"]
  assert f"{header}:1:" in got["qa_header"] and "header" in got["qa_header"]
  assert f"{names}:2:" in got["qa_names"] and "list of strings" in got["qa_names"]
  assert "ProvenanceError" in got["mismatch"] and "model" in got["mismatch"]
  assert "--allow_mismatch" in got["mismatch"]
  assert not (tmp_path / "r.json").exists()


def test_qa_file_faults_name_file_and_line(tmp_path):
  for text, line, fault in [("question\tanswers\nq?\t['a']\n", 1, "header line"),
                            ("q?\t['a']\nr?\t[Paris]\n", 2, "not a Python/JSON list of strings"),
                            ("q?\t['a', 3]\n", 1, "hold a int"),
                            ("q?\t'a'\n", 1, "not a list of strings")]:
    path = tmp_path / "q.csv"
    path.write_text(text)
    with pytest.raises(DataError) as e:
      list(iter_qas(path))
    message = str(e.value)
    assert message.startswith(f"{path}:{line}: ") and fault in message and "\n" not in message
    assert "ast." not in message
  path.write_text("q?\t[\"a\", \"b\"]\nr?\t['c']\n")
  assert [a for _, _, a in iter_qas(path)] == [["a", "b"], ["c"]]


def test_retriever_refuses_pieces_that_do_not_belong(pieces):
  from bpr_jax.exported_model import load_exported
  from bpr_jax.provenance import ProvenanceError
  with pytest.raises(ProvenanceError, match=r"model .*--allow_mismatch"):
    Retriever.from_paths(pieces["B"], pieces["I"])
  index = BinaryIndex.load(pieces["I"])
  model_b = load_exported(pieces["B"])
  with pytest.raises(ProvenanceError, match="model"):
    Retriever(model_b, index, model_dir=pieces["B"])
  other = pieces["root"] / "other.tsv"
  other.write_text(pieces["P"].read_text().replace("holds", "has"))
  with pytest.raises(ProvenanceError, match="passages"):
    Retriever(model_b, index, passages=other, passage_cache_dir=pieces["root"] / "cache")
  r = Retriever(model_b, index, model_dir=pieces["B"], allow_mismatch=True)
  assert r.mismatched == ["model"] and len(r.search(["which passage?"], k=3)[0]) == 3
  r = Retriever.from_paths(pieces["A"], pieces["I"], pieces["P"],
                           passage_cache_dir=pieces["root"] / "cache")
  assert r.mismatched == []


def test_index_rerun_reuses_and_other_codes_are_refused(pieces, tmp_path):
  from bpr_jax.provenance import ProvenanceError
  lines = []
  before = (pieces["I"] / "meta.json").read_text()
  meta = build_from_codes_dir(pieces["C"], pieces["I"], "flat", log=lines.append)
  assert len(lines) == 1 and "reusing" in lines[0]
  assert (pieces["I"] / "meta.json").read_text() == before
  recorded = meta[provenance.INPUTS]
  assert recorded["model"]["sha256"] == provenance.model_fingerprint(pieces["A"])["sha256"]
  assert recorded["settings"] == {"kind": "flat"} and "sha256" in recorded["codes"]
  # Other codes into the same folder: refused naming what changed; --overwrite replaces it.
  codes2 = tmp_path / "C2"
  _write_codes(codes2, pieces["codes"][::-1].copy(), pieces["ids"], pieces["A"], pieces["P"])
  out = tmp_path / "I"
  shutil.copytree(pieces["I"], out)
  with pytest.raises(ProvenanceError, match=r"codes: .*--overwrite"):
    build_from_codes_dir(codes2, out, "flat")
  with pytest.raises(ProvenanceError, match="settings"):
    build_from_codes_dir(pieces["C"], out, "hash", hash_bits=4)
  assert json.loads((out / "meta.json").read_text()) == json.loads(before)  # untouched
  build_from_codes_dir(codes2, out, "flat", overwrite=True)
  rebuilt = BinaryIndex.load(out)  # kept alive: a flat index's codes view its faiss storage
  np.testing.assert_array_equal(np.asarray(rebuilt.codes), pieces["codes"][::-1])
  assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left
  # The command: the same inputs reuse in one line, other ones exit 2 in one line.
  cmd = [sys.executable, "-m", "bpr_jax.index", f"--codes={codes2}", f"--output={out}"]
  res = subprocess.run(cmd, capture_output=True, text=True, env=ENV, check=False)
  assert res.returncode == 0 and "reusing" in res.stdout, res.stderr
  res = subprocess.run(cmd[:3] + [f"--codes={pieces['C']}", f"--output={out}"],
                       capture_output=True, text=True, env=ENV, check=False)
  assert res.returncode == 2 and "Traceback" not in res.stderr
  assert res.stderr.strip().count("\n") == 0 and res.stderr.startswith("error: ")
  assert "--overwrite" in res.stderr


def _evaluate(*args, cache_dir=None):
  env = ENV if cache_dir is None else dict(ENV, BPR_CACHE_DIR=str(cache_dir))
  return subprocess.run([sys.executable, "-m", "bpr_jax.evaluate", *args], capture_output=True,
                        text=True, env=env, check=False)


def test_evaluate_command_mismatch_reuse_and_no_cache_beside_passages(pieces, tmp_path):
  out = tmp_path / "out" / "r.json"
  args = _base(pieces, tmp_path, model="B", output=out)
  res = _evaluate(*args)  # model B did not make the index's codes
  assert res.returncode == 2, res.stderr[-2000:]
  assert res.stderr.startswith("error: ") and res.stderr.strip().count("\n") == 0
  assert "model" in res.stderr and "--allow_mismatch" in res.stderr and "Traceback" not in res.stderr
  res = _evaluate(*args, "--allow_mismatch", cache_dir=tmp_path / "cache")
  assert res.returncode == 0, res.stderr[-2000:]
  result = json.loads(out.read_text())
  assert [r["name"] for r in result["rows"]][0] == "bpr-flat"
  assert result["inputs"]["settings"]["k"] == [1, 5] and "passages" in result["inputs"]
  assert not list(pieces["P"].parent.glob("*.pidx"))  # nothing written beside the passage file
  assert not (out.parent / ".passage_cache").exists()  # nor beside the output
  assert list((tmp_path / "cache" / "passages").glob("*.pidx"))  # serve's cache ($BPR_CACHE_DIR)
  # The same inputs again: the stored result, no work; other settings: refused, or --overwrite.
  res = _evaluate(*args, "--allow_mismatch", cache_dir=tmp_path / "cache")
  assert res.returncode == 0 and "reusing" in res.stdout and "| bpr-flat |" in res.stdout
  res = _evaluate(*args[:-1], "--k=1", "--allow_mismatch")
  assert res.returncode == 2 and "settings" in res.stderr and "--overwrite" in res.stderr
  assert res.stderr.strip().count("\n") == 0


def test_evaluate_bad_flag_is_one_line(tmp_path):
  res = _evaluate("--model=/nonexistent", "--index=/nonexistent", f"--output={tmp_path / 'r.json'}",
                  "--qa=/nonexistent.csv", "--passages=/nonexistent.tsv", "--k=abc")
  assert res.returncode == 2 and "Traceback" not in res.stderr
  assert res.stderr.strip().splitlines() == [res.stderr.strip()]
  assert res.stderr.startswith("error: --k: 'abc'")

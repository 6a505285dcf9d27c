"""Tests for bpr_jax.io: atomic writes, checksums, safe .npy loading."""
import json
import os
import stat

import numpy as np
import pytest

from bpr_jax import io


def _no_temps(folder):
  return not [p for p in folder.iterdir() if p.name.startswith(".")]


def test_atomic_text_json_npy_npz(tmp_path):
  io.atomic_write_text(tmp_path / "sub" / "a.txt", "héllo\n")  # parent made
  assert (tmp_path / "sub" / "a.txt").read_text(encoding="utf-8") == "héllo\n"
  io.atomic_write_json(tmp_path / "a.json", {"b": 1, "a": [1, 2]})
  assert (tmp_path / "a.json").read_text().endswith("\n")
  assert json.loads((tmp_path / "a.json").read_text()) == {"a": [1, 2], "b": 1}
  io.atomic_save_npy(tmp_path / "a.npy", np.arange(5))
  np.testing.assert_array_equal(io.load_npy(tmp_path / "a.npy"), np.arange(5))
  io.atomic_savez(tmp_path / "a.npz", x=np.ones(3), y=np.array(["p", "q"]))
  with np.load(tmp_path / "a.npz", allow_pickle=False) as z:
    assert z["y"].tolist() == ["p", "q"]
  with pytest.raises(ValueError, match="pickle"):
    io.atomic_savez(tmp_path / "b.npz", x=np.array([{}], dtype=object))
  assert _no_temps(tmp_path)


def test_failed_write_keeps_the_old_file(tmp_path):
  path = tmp_path / "f.txt"
  io.atomic_write_text(path, "old")
  with pytest.raises(RuntimeError):
    with io.atomic_file(path, "w") as f:
      f.write("half")
      raise RuntimeError("killed")
  assert path.read_text() == "old" and _no_temps(tmp_path)
  with pytest.raises(ValueError, match="mode"):
    with io.atomic_file(path, "a"):
      pass


def test_file_mode_follows_umask(tmp_path):
  old = os.umask(0o027)
  try:
    io.atomic_write_text(tmp_path / "m.txt", "x")
    with io.atomic_directory(tmp_path / "d") as d:
      (d / "f").write_text("y")
  finally:
    os.umask(old)
  assert stat.S_IMODE((tmp_path / "m.txt").stat().st_mode) == 0o640
  assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o750


def test_atomic_directory_replaces_or_keeps(tmp_path):
  out = tmp_path / "out"
  with io.atomic_directory(out) as d:
    (d / "a").write_text("1")
  with io.atomic_directory(out) as d:
    (d / "b").write_text("2")
  assert sorted(p.name for p in out.iterdir()) == ["b"]  # replaced as a whole
  with pytest.raises(RuntimeError):
    with io.atomic_directory(out) as d:
      (d / "c").write_text("3")
      raise RuntimeError("killed")
  assert sorted(p.name for p in out.iterdir()) == ["b"]
  assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
  (tmp_path / "file").write_text("")
  with pytest.raises(FileExistsError):
    with io.atomic_directory(tmp_path / "file"):
      pass


def test_checksums_and_check_file(tmp_path):
  path = tmp_path / "x.bin"
  path.write_bytes(b"abc")
  rec = io.file_record(path)
  assert rec == {"sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
                 "bytes": 3}
  io.check_file(path, rec)
  path.write_bytes(b"abd")
  with pytest.raises(ValueError, match="checksum"):
    io.check_file(path, rec)
  io.check_file(path, rec, verify=False)  # size still matches
  path.write_bytes(b"ab")
  with pytest.raises(ValueError, match="truncated"):
    io.check_file(path, rec, verify=False)
  with pytest.raises(FileNotFoundError):
    io.check_file(tmp_path / "nope", rec)


def test_load_npy_and_read_json_errors(tmp_path):
  np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
  with pytest.raises(ValueError, match="truncated or invalid"):
    io.load_npy(tmp_path / "obj.npy")  # pickled arrays are refused
  (tmp_path / "t.npy").write_bytes(b"\x93NUMPY")
  with pytest.raises(ValueError, match="truncated or invalid"):
    io.load_npy(tmp_path / "t.npy", mmap=False)
  with pytest.raises(FileNotFoundError):
    io.load_npy(tmp_path / "none.npy")
  (tmp_path / "b.json").write_text("{")
  with pytest.raises(ValueError, match="b.json: invalid JSON"):
    io.read_json(tmp_path / "b.json")

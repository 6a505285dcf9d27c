"""benchmarks/cpu_env.py, the CPU allocator settings: what they set, that a shell can take them, and that no value changes."""
import os
import subprocess
import sys

import pytest

from benchmarks import cpu_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_each_allocator_sets_its_variables_and_nothing_else(tmp_path):
  lib = tmp_path / "libjemalloc.so.2"
  lib.write_bytes(b"")
  env = cpu_env.allocator_env("jemalloc", {"LD_PRELOAD": "/x/other.so"}, jemalloc_paths=(str(lib),))
  assert env == {"LD_PRELOAD": f"{lib}:/x/other.so", "MALLOC_CONF": cpu_env.JEMALLOC_CONF}
  assert cpu_env.active_allocator(env) == "jemalloc"
  env = cpu_env.allocator_env("thp", {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, jemalloc_paths=(str(lib),))
  assert env == {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1:glibc.malloc.arena_max=2"}
  assert cpu_env.active_allocator(env) == "thp"
  assert cpu_env.allocator_env("thp", {}) == {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
  env = cpu_env.allocator_env("heap", {"GLIBC_TUNABLES": "glibc.malloc.tcache_count=0"})
  assert env == {"GLIBC_TUNABLES": cpu_env.HEAP_TUNABLES + ":glibc.malloc.tcache_count=0"}
  assert cpu_env.active_allocator(env) == "heap"
  assert "glibc.malloc.mmap_max=0" in cpu_env.HEAP_TUNABLES and "glibc.malloc.arena_max=1" in cpu_env.HEAP_TUNABLES
  assert cpu_env.allocator_env() == {}  # the default changes nothing
  assert cpu_env.allocator_env("default", {"LD_PRELOAD": "x"}) == {}
  assert cpu_env.active_allocator({}) == "default"
  # applied twice: nothing doubles
  twice = cpu_env.with_allocator(cpu_env.with_allocator({}, "thp"), "thp")
  assert twice["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"


def test_bad_or_missing_allocator_is_an_error(tmp_path):
  with pytest.raises(ValueError, match="allocator"):
    cpu_env.allocator_env("tcmalloc", {})
  with pytest.raises(FileNotFoundError, match="libjemalloc"):
    cpu_env.allocator_env("jemalloc", {}, jemalloc_paths=(str(tmp_path / "none.so"),))


def test_the_printed_exports_run_jax_with_the_same_values():
  """`eval "$(python -m benchmarks.cpu_env --allocator=thp|heap)"`, then a jitted function: same bits as the default."""
  out = subprocess.run([sys.executable, "-m", "benchmarks.cpu_env", "--allocator=thp"], cwd=REPO,
                       capture_output=True, text=True, check=True).stdout
  assert out.strip() == "export GLIBC_TUNABLES=glibc.malloc.hugetlb=1"
  prog = ("import jax, jax.numpy as jnp, numpy as np;"
          "from benchmarks import cpu_env;"
          "x = jnp.asarray(np.random.default_rng(0).standard_normal((512, 512), np.float32));"
          "f = jax.jit(lambda a: jax.nn.gelu(a @ a.T).sum(axis=1));"
          "print(cpu_env.active_allocator(), np.asarray(f(x)).tobytes().hex()[:64])")
  results = []
  for allocator in ("default", "thp", "heap"):
    shell = "" if allocator == "default" else f'eval "$({sys.executable} -m benchmarks.cpu_env --allocator={allocator})" && '
    env = cpu_env.without_allocator(dict(os.environ))
    proc = subprocess.run(["bash", "-c", f"{shell}{sys.executable} -c '{prog}'"], cwd=REPO, env=env,
                          capture_output=True, text=True, check=True)
    results.append(proc.stdout.split())
  assert [r[0] for r in results] == ["default", "thp", "heap"]
  assert results[0][1] == results[1][1] == results[2][1]

"""The repository's layout: the package holds the product, benchmarks stand beside it.

No bpr_jax module imports `benchmarks` (or `tests`), and no product test (tests/*.py other than
tests/test_benchmark_*.py) imports `benchmarks`, runs one of its modules (`python -m benchmarks.X`)
or loads one of its files by path (`REPO / "benchmarks" / "X.py"`).
"""
import ast
import pathlib
import re

REPO = pathlib.Path(__file__).resolve().parents[1]
MODULE_STRING = re.compile(r"^(benchmarks|tests)(\.\w+)+$")  # `python -m benchmarks.x`
PATH_STRING = re.compile(r"^(benchmarks|tests)(/.*)?$")  # `REPO / "benchmarks" / "x.py"`


def imported(path: pathlib.Path, *, paths: bool = False) -> set[str]:
  """Top-level names of what `path` imports or names as a module string (`-m benchmarks.x`);
  with `paths`, also the first part of a path string ("benchmarks", "benchmarks/x.py")."""
  names = set()
  for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
    if isinstance(node, ast.Import):
      names.update(alias.name.split(".")[0] for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      names.add(node.module.split(".")[0])
    elif isinstance(node, ast.Constant) and isinstance(node.value, str) and MODULE_STRING.match(node.value):
      names.add(node.value.split(".")[0])
    elif paths and isinstance(node, ast.Constant) and isinstance(node.value, str) and PATH_STRING.match(node.value):
      names.add(node.value.split("/")[0])
  return names


def offenders(files, forbidden: set[str], *, paths: bool = False) -> list[str]:
  return sorted(f"{f.relative_to(REPO)}: {', '.join(sorted(imported(f, paths=paths) & forbidden))}"
                for f in files if imported(f, paths=paths) & forbidden)


def test_no_package_module_imports_benchmarks_or_tests():
  modules = sorted((REPO / "bpr_jax").rglob("*.py"))
  assert len(modules) > 10
  assert offenders(modules, {"benchmarks", "tests"}) == []


def test_no_product_test_imports_benchmarks():
  tests = [p for p in sorted((REPO / "tests").glob("*.py"))
           if not p.name.startswith("test_benchmark_") and p.name != "test_layout.py"]  # this file names them
  assert any(p.name == "test_serve.py" for p in tests)
  assert offenders(tests, {"benchmarks"}, paths=True) == []


def test_the_check_sees_each_kind_of_import(tmp_path):
  for text in ("import benchmarks.common\n", "from benchmarks import common\n",
               "import subprocess\nsubprocess.run(['python', '-m', 'benchmarks.fake'])\n"):
    (tmp_path / "m.py").write_text(text)
    assert "benchmarks" in imported(tmp_path / "m.py"), text
  (tmp_path / "m.py").write_text("import pathlib\nx = pathlib.Path('.') / 'benchmarks' / 'device_speed.py'\n")
  assert "benchmarks" in imported(tmp_path / "m.py", paths=True)
  assert "benchmarks" not in imported(tmp_path / "m.py")  # a path in a package module's text is no import
  (tmp_path / "m.py").write_text("from bpr_jax import benchmarks_util\nx = 'see the benchmarks: benchmarks.md'\n")
  assert "benchmarks" not in imported(tmp_path / "m.py", paths=True)


def test_readme_is_for_users_and_its_table_names_real_files():
  """The README stays a user's page (<= 15,000 bytes; measurements live in benchmarks/README.md),
  and every file its "Where it lives" table names exists (paths from the repository root or, as
  the table abbreviates them, from bpr_jax/)."""
  readme = REPO / "README.md"
  assert readme.stat().st_size <= 15_000
  text = readme.read_text(encoding="utf-8")
  table = text[text.index("## Where it lives"):]
  named = []
  for line in table.splitlines():
    if line.startswith("| ") and not line.startswith("| piece"):
      named += re.findall(r"`([^`]+)`", line.rstrip(" |").rsplit("|", 1)[-1])
  assert len(named) >= 25
  for name in named:
    assert (REPO / name).exists() or (REPO / "bpr_jax" / name).exists(), f"README names {name}"
  assert (REPO / "benchmarks" / "README.md").is_file()

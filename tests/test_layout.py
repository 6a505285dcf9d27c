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


def module_imports(root: pathlib.Path) -> dict[str, set[str]]:
  """The import graph of the package (or benchmarks folder) `root`: module -> the modules of the
  same package it imports, as ast sees them anywhere in its text (inside functions too):
  `import P.x`, `from P.x import y` (y itself when it is a submodule), `from P import x`, and
  relative imports. Importing a submodule is an edge to it alone, not to its parent packages."""
  modules: dict[str, tuple[pathlib.Path, bool]] = {}
  for path in sorted(root.rglob("*.py")):
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)

  def known(name: str) -> str | None:  # `P.x.y` -> the longest module prefix of it
    while name and name not in modules:
      name = name.rpartition(".")[0]
    return name or None

  graph = {}
  for name, (path, is_package) in modules.items():
    edges = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
      if isinstance(node, ast.Import):
        edges.update(known(alias.name) for alias in node.names)
      elif isinstance(node, ast.ImportFrom):
        if node.level:
          base = name.split(".")[:None if is_package else -1]
          base = base[:len(base) - node.level + 1]
          source = ".".join(base + ([node.module] if node.module else []))
        else:
          source = node.module or ""
        for alias in node.names:
          edges.add(known(f"{source}.{alias.name}") if f"{source}.{alias.name}" in modules else known(source))
    graph[name] = edges - {None, name}
  return graph


def import_cycle(graph: dict[str, set[str]]) -> list[str]:
  """One circle of `graph` as [a, b, ..., a] (depth-first, in sorted order), or []."""
  state: dict[str, int] = {}  # 1: on the current path, 2: done
  path: list[str] = []

  def visit(node: str) -> list[str]:
    state[node] = 1
    path.append(node)
    for nxt in sorted(graph.get(node, ())):
      if state.get(nxt) == 1:
        return path[path.index(nxt):] + [nxt]
      if nxt not in state:
        found = visit(nxt)
        if found:
          return found
    path.pop()
    state[node] = 2
    return []

  for node in sorted(graph):
    if node not in state:
      found = visit(node)
      if found:
        return found
  return []


def test_no_import_circles_in_the_package_or_the_benchmarks():
  """Modules of bpr_jax (and of benchmarks/) import one another without a circle, counting
  imports inside functions: a lazy import still makes the modules depend on each other."""
  graph = module_imports(REPO / "bpr_jax")
  assert len(graph) > 10 and "bpr_jax.models.build" in graph["bpr_jax.checkpoints"]
  for root in ("bpr_jax", "benchmarks"):
    circle = import_cycle(module_imports(REPO / root))
    assert not circle, f"import circle in {root}/: {' -> '.join(circle)}"


def test_the_circle_check_sees_each_kind_of_import(tmp_path):
  pkg = tmp_path / "pkg"
  (pkg / "sub").mkdir(parents=True)
  (pkg / "__init__.py").write_text("")
  (pkg / "sub" / "__init__.py").write_text("from .c import C\n")
  for text, edge in (("import pkg.b\n", "pkg.b"), ("from pkg.b import x\n", "pkg.b"),
                     ("from pkg import b\n", "pkg.b"), ("from . import b\n", "pkg.b"),
                     ("from .sub.c import C\n", "pkg.sub.c"), ("from pkg.sub import c\n", "pkg.sub.c"),
                     ("from pkg.sub import C\n", "pkg.sub"),
                     ("def f():\n  from pkg.b import x  # lazy\n", "pkg.b")):
    (pkg / "a.py").write_text(text)
    (pkg / "b.py").write_text("import os\n")
    (pkg / "sub" / "c.py").write_text("from .. import a\n")
    graph = module_imports(pkg)
    assert edge in graph["pkg.a"], text
    assert graph["pkg.sub.c"] == {"pkg.a"}
  (pkg / "b.py").write_text("def g():\n  import pkg.a\n")
  (pkg / "a.py").write_text("from pkg import b\n")
  assert import_cycle(module_imports(pkg)) == ["pkg.a", "pkg.b", "pkg.a"]
  (pkg / "b.py").write_text("import pkg.sub.c\n")  # a -> b -> sub.c -> a
  assert import_cycle(module_imports(pkg)) == ["pkg.a", "pkg.b", "pkg.sub.c", "pkg.a"]
  (pkg / "sub" / "c.py").write_text("import os\n")
  assert import_cycle(module_imports(pkg)) == []

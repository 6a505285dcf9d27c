"""End-to-end: the real server on loopback, its search page in headless Chromium.

The page runs the query in its URL (`/?q=...&k=...`) on load; Chromium's
`--dump-dom` (with a virtual-time budget so the fetch finishes) returns the
rendered DOM, in which the result titles must appear.

Needs Chromium: `apt-get update && apt-get install -y chromium`.
"""
from __future__ import annotations

import html
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
from typing import Iterator

import httpx
import pytest

from tests.fake_serve import FakeRetriever

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome")
TITLES = ["Alpha", "Tom & <b>Jerry</b>", "Ünïcode Ωmega", "Delta \"quoted\"", "Echo", "Foxtrot"]


def _chromium() -> str:
  for name in CHROMIUM_CANDIDATES:
    found = shutil.which(name)
    if found:
      return found
  pytest.fail("Chromium not found; install it with: apt-get update && apt-get install -y chromium")


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, pathlib.Path]]:
  tmp = tmp_path_factory.mktemp("serve_browser")
  passages = tmp / "psgs.tsv"
  rows = ["id\ttext\ttitle"] + [f"d{i}\tBody of passage {i}\t{t}" for i, t in enumerate(TITLES)]
  passages.write_text("\n".join(rows) + "\n", encoding="utf-8")
  port = _free_port()
  log = open(tmp / "server.log", "wb")
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  proc = subprocess.Popen(
      [sys.executable, "-m", "tests.fake_serve", f"--passages={passages}",
       f"--passage_cache_dir={tmp / 'cache'}", "--host=127.0.0.1", f"--port={port}"],
      cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
  base = f"http://127.0.0.1:{port}"
  try:
    deadline = time.monotonic() + 60
    while True:
      if proc.poll() is not None:
        pytest.fail(f"server exited with {proc.returncode}:\n{(tmp / 'server.log').read_text()}")
      try:
        if httpx.get(f"{base}/health", timeout=1).status_code == 200:
          break
      except httpx.HTTPError:
        pass
      if time.monotonic() > deadline:
        pytest.fail(f"server did not come up:\n{(tmp / 'server.log').read_text()}")
      time.sleep(0.2)
    yield base, tmp
  finally:
    proc.terminate()
    try:
      proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
      proc.kill()
      proc.wait()
    log.close()


def _dump_dom(url: str, profile: pathlib.Path) -> str:
  cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage",
         f"--user-data-dir={profile}", "--virtual-time-budget=15000", "--dump-dom", url]
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
  assert proc.returncode == 0, f"chromium failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
  return proc.stdout


def test_page_runs_query_from_url_and_renders_results(server: tuple[str, pathlib.Path]) -> None:
  base, tmp = server
  question = "who is Ωmega & friends?"
  k = len(TITLES)
  dom = _dump_dom(f"{base}/?q={urllib.parse.quote(question)}&k={k}", tmp / "profile1")
  assert 'data-state="done"' in dom, dom[-2000:]
  expected = FakeRetriever([f"d{i}" for i in range(len(TITLES))]).search([question], k)[0]
  order = [TITLES[int(h["id"][1:])] for h in expected]
  positions = []
  for title in order:
    escaped = html.escape(title, quote=False)
    assert f'<h3 class="title">{escaped}</h3>' in dom, (title, dom[-3000:])
    positions.append(dom.index(f'<h3 class="title">{escaped}</h3>'))
  assert positions == sorted(positions), "results are not rendered in score order"
  assert "<b>Jerry</b>" not in dom  # Passage text is rendered as text, never as HTML.
  assert f"{k} results for \u201c{html.escape(question, quote=False)}\u201d in" in dom


def test_page_shows_server_errors(server: tuple[str, pathlib.Path]) -> None:
  base, tmp = server
  dom = _dump_dom(f"{base}/?q=anything&k=5000", tmp / "profile2")
  assert 'data-state="error"' in dom, dom[-2000:]
  assert "HTTP 422" in dom and "between 1 and 1000" in dom
  assert '<li class="result">' not in dom

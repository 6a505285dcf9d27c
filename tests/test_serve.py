"""In-process tests of the search service (bpr_jax.serve) with a fake retriever."""
from __future__ import annotations

import asyncio
import json
import pathlib
import threading
import time
from typing import Any, Iterator

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.fake_serve import FakeRetriever
from bpr_jax.passage_store import PassageStore
from bpr_jax.serve import Limits, create_app

N_PASSAGES = 30


@pytest.fixture()
def store(tmp_path: pathlib.Path) -> Iterator[PassageStore]:
  lines = ["id\ttext\ttitle"] + [f"p{i}\tText number {i}\tTitle {i}" for i in range(N_PASSAGES)]
  path = tmp_path / "psgs.tsv"
  path.write_text("\n".join(lines) + "\n", encoding="utf-8")
  with PassageStore(path, cache_dir=tmp_path / "cache") as s:
    yield s


@pytest.fixture()
def fake(store: PassageStore) -> FakeRetriever:
  return FakeRetriever.from_store(store)


@pytest.fixture()
def client(fake: FakeRetriever, store: PassageStore) -> Iterator[TestClient]:
  with TestClient(create_app(fake, store, max_wait_ms=1)) as c:
    yield c


def _expected(fake: FakeRetriever, question: str, k: int) -> list[dict[str, Any]]:
  out = []
  for hit in FakeRetriever(fake.ids).search([question], k)[0]:  # Not recorded in fake.calls.
    i = int(hit["id"][1:])
    out.append({"id": hit["id"], "title": f"Title {i}", "text": f"Text number {i}", "score": hit["score"]})
  return out


def test_health_and_page(client: TestClient) -> None:
  health = client.get("/health")
  assert health.status_code == 200
  body = health.json()
  assert body["status"] == "ok" and body["passages"] == N_PASSAGES
  assert body["limits"]["max_questions"] == 1024
  page = client.get("/")
  assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
  assert 'id="search-form"' in page.text and 'fetch("search"' in page.text


def test_search_answers_each_question(client: TestClient, fake: FakeRetriever) -> None:
  questions = ["who wrote hamlet", "what is binary hashing"]
  resp = client.post("/search", json={"questions": questions, "k": 3})
  assert resp.status_code == 200, resp.text
  results = resp.json()["results"]
  assert len(results) == 2
  for question, hits in zip(questions, results):
    assert hits == _expected(fake, question, 3)
    assert set(hits[0]) == {"id", "title", "text", "score"}
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)


def test_default_k_and_k_beyond_corpus(client: TestClient) -> None:
  default = client.post("/search", json={"questions": ["q"]}).json()["results"][0]
  assert len(default) == 20
  big = client.post("/search", json={"questions": ["q"], "k": 1000}).json()["results"][0]
  assert len(big) == N_PASSAGES


BAD_REQUESTS = [
    (b"", 400, "body is empty"),
    (b"not json", 400, "not valid JSON"),
    (b"\xff\xfe\x00", 400, "not valid JSON"),
    (b"[1, 2]", 422, "must be a JSON object"),
    (b'{"question": ["q"]}', 422, "unknown field"),
    (b'{"k": 3}', 422, "missing field 'questions'"),
    (b'{"questions": "q"}', 422, "wrap a single question"),
    (b'{"questions": {"a": 1}}', 422, "must be a list"),
    (b'{"questions": []}', 422, "is empty"),
    (b'{"questions": ["ok", 5]}', 422, "questions[1] must be a string"),
    (b'{"questions": ["ok", null]}', 422, "questions[1] must be a string"),
    (b'{"questions": [""]}', 422, "questions[0] is empty"),
    (b'{"questions": ["ok", "   "]}', 422, "questions[1] is empty"),
    (b'{"questions": ["q"], "k": 0}', 422, "between 1 and 1000"),
    (b'{"questions": ["q"], "k": -5}', 422, "between 1 and 1000"),
    (b'{"questions": ["q"], "k": 1001}', 422, "between 1 and 1000"),
    (b'{"questions": ["q"], "k": "5"}', 422, "must be an integer"),
    (b'{"questions": ["q"], "k": 2.5}', 422, "must be an integer"),
    (b'{"questions": ["q"], "k": true}', 422, "must be an integer"),
    (b'{"questions": ["q"], "k": null}', 422, "must be an integer"),
    (json.dumps({"questions": ["q"] * 1025}).encode(), 413, "too many questions: 1025"),
    (json.dumps({"questions": ["q"] * 10_000}).encode(), 413, "too many questions: 10000"),
    (json.dumps({"questions": ["x" * 5000]}).encode(), 422, "5000 characters"),
]


@pytest.mark.parametrize("body,status,message", BAD_REQUESTS, ids=[m for _, _, m in BAD_REQUESTS])
def test_bad_input_gets_4xx_and_service_goes_on(client: TestClient, body: bytes, status: int,
                                                message: str) -> None:
  resp = client.post("/search", content=body, headers={"content-type": "application/json"})
  assert resp.status_code == status, resp.text
  assert message in resp.json()["detail"]
  ok = client.post("/search", json={"questions": ["still alive?"], "k": 2})
  assert ok.status_code == 200 and len(ok.json()["results"][0]) == 2


def test_body_size_limit_declared_and_streamed(fake: FakeRetriever, store: PassageStore) -> None:
  limits = Limits(max_body_bytes=10_000)
  with TestClient(create_app(fake, store, limits=limits)) as client:
    big = json.dumps({"questions": ["word " * 500] * 5}).encode()
    assert len(big) > limits.max_body_bytes
    resp = client.post("/search", content=big, headers={"content-type": "application/json"})
    assert resp.status_code == 413 and "limit is 10000 bytes" in resp.json()["detail"]

    def chunks() -> Iterator[bytes]:  # No Content-Length: chunked transfer.
      for i in range(0, len(big), 1000):
        yield big[i:i + 1000]

    resp = client.post("/search", content=chunks(), headers={"content-type": "application/json"})
    assert resp.status_code == 413 and "over the limit" in resp.json()["detail"]
    assert client.post("/search", json={"questions": ["fine"]}).status_code == 200


def test_default_body_limit_is_one_megabyte(client: TestClient) -> None:
  body = b'{"questions": ["q"], "k": 1' + b" " * 1_000_001 + b"}"
  resp = client.post("/search", content=body, headers={"content-type": "application/json"})
  assert resp.status_code == 413


def test_wrong_method_and_path(client: TestClient) -> None:
  assert client.get("/search").status_code == 405
  assert client.get("/nope").status_code == 404


def test_retriever_failure_is_500_and_service_goes_on(store: PassageStore) -> None:
  class Flaky(FakeRetriever):
    def search(self, questions: list[str], k: int) -> list[list[dict[str, Any]]]:
      if "boom" in questions:
        raise RuntimeError("encoder exploded")
      return super().search(questions, k)

  with TestClient(create_app(Flaky.from_store(store), store, max_wait_ms=0)) as client:
    resp = client.post("/search", json={"questions": ["boom"]})
    assert resp.status_code == 500 and "encoder exploded" in resp.json()["detail"]
    assert client.post("/search", json={"questions": ["fine"]}).status_code == 200


def test_unknown_passage_ids_give_empty_text(store: PassageStore) -> None:
  class Ghost:
    def search(self, questions: list[str], k: int) -> list[list[dict[str, Any]]]:
      return [[{"id": "ghost", "score": 1.0}, {"id": "p3", "score": 0.5, "row": 3}] for _ in questions]

  with TestClient(create_app(Ghost(), store)) as client:
    hits = client.post("/search", json={"questions": ["q"]}).json()["results"][0]
  assert hits == [{"id": "ghost", "title": "", "text": "", "score": 1.0},
                  {"id": "p3", "title": "Title 3", "text": "Text number 3", "score": 0.5}]


async def _post_all(app: Any, bodies: list[dict[str, Any]]) -> list[httpx.Response]:
  transport = httpx.ASGITransport(app=app)
  async with httpx.AsyncClient(transport=transport, base_url="http://test") as ac:
    return await asyncio.gather(*(ac.post("/search", json=b) for b in bodies))


def test_concurrent_requests_are_batched(store: PassageStore) -> None:
  fake = FakeRetriever.from_store(store, delay_ms=40)
  app = create_app(fake, store, max_batch=8, max_wait_ms=20)
  bodies = [{"questions": [f"question {i}"], "k": 1 + i % 5} for i in range(24)]
  responses = asyncio.run(_post_all(app, bodies))
  assert [r.status_code for r in responses] == [200] * 24
  for body, resp in zip(bodies, responses):
    assert resp.json()["results"] == [_expected(fake, body["questions"][0], body["k"])]
  assert sum(fake.calls) == 24
  assert all(c <= 8 for c in fake.calls)
  assert len(fake.calls) <= 6, fake.calls  # 24 single-question requests in a few encoder calls.
  assert max(fake.calls) == 8


def test_request_larger_than_max_batch_is_chunked(store: PassageStore) -> None:
  fake = FakeRetriever.from_store(store)
  with TestClient(create_app(fake, store, max_batch=8, max_wait_ms=0)) as client:
    questions = [f"q{i}" for i in range(20)]
    resp = client.post("/search", json={"questions": questions, "k": 2})
  assert resp.status_code == 200
  assert resp.json()["results"] == [_expected(fake, q, 2) for q in questions]
  assert fake.calls == [8, 8, 4]


def test_overload_answers_503(store: PassageStore) -> None:
  gate = threading.Event()

  class Slow(FakeRetriever):
    def search(self, questions: list[str], k: int) -> list[list[dict[str, Any]]]:
      gate.wait(5)
      return super().search(questions, k)

  app = create_app(Slow.from_store(store), store, max_batch=1, max_wait_ms=0, max_pending=2)

  async def run() -> list[int]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as ac:
      first = [asyncio.create_task(ac.post("/search", json={"questions": [f"q{i}"]})) for i in range(2)]
      await asyncio.sleep(0.1)
      third = await ac.post("/search", json={"questions": ["q3"]})
      gate.set()
      return [third.status_code] + [(await t).status_code for t in first]

  started = time.monotonic()
  assert asyncio.run(run()) == [503, 200, 200]
  assert time.monotonic() - started < 5


def test_real_retriever_and_index_behind_the_service(tmp_path: pathlib.Path) -> None:
  """bpr_jax.search.Retriever over a real BinaryIndex (fake question encoder) served end to end."""
  import numpy as np

  from bpr_jax.codes import pack_codes
  from bpr_jax.index import BinaryIndex
  from bpr_jax.search import Retriever

  fixture = pathlib.Path(__file__).parent / "fixtures" / "psgs_small.tsv"
  store = PassageStore(fixture, cache_dir=tmp_path / "cache")
  n, dim = len(store), 64
  vecs = np.random.default_rng(0).standard_normal((n, dim)).astype(np.float32)
  ids = [store.id_at(r) for r in range(n)]

  class QuestionEncoder:  # Question "about <id>" encodes exactly like passage <id>.
    settings = {"code_bits": dim}

    def encode_questions(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
      return np.stack([vecs[ids.index(t.split()[-1])] for t in texts])

  retriever = Retriever(QuestionEncoder(), BinaryIndex.from_arrays(pack_codes(vecs), ids=ids), l=n)
  with TestClient(create_app(retriever, store)) as client:
    resp = client.post("/search", json={"questions": [f"about {ids[3]}", f"about {ids[0]}"], "k": 3})
  assert resp.status_code == 200, resp.text
  results = resp.json()["results"]
  expected = store.get([ids[3], ids[0]])
  for hits, pid, (title, text) in zip(results, [ids[3], ids[0]], expected):
    assert len(hits) == 3 and hits[0]["id"] == pid
    assert (hits[0]["title"], hits[0]["text"]) == (title, text)
    assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]


def test_k_buckets_cover_every_k() -> None:
  from bpr_jax.serve import batch_sizes, k_bucket, k_buckets
  assert k_buckets(1000) == [32, 256, 1000]
  assert {k_bucket(k, 1000) for k in range(1, 1001)} == set(k_buckets(1000))
  assert all(k_bucket(k, 1000) >= k for k in range(1, 1001))
  assert batch_sizes(64) == [1, 2, 4, 8, 16, 32, 64] and batch_sizes(100)[-2:] == [64, 100]


def test_warmup_compiles_every_search_shape_before_serving(tmp_path: pathlib.Path) -> None:
  """After start-up warm-up no request compiles anything: the first requests are as fast as later
  ones (checked on the jit caches, not on a clock)."""
  import numpy as np

  from bpr_jax import search as search_mod
  from bpr_jax.codes import pack_codes
  from bpr_jax.index import BinaryIndex
  from bpr_jax.search import Retriever
  from bpr_jax.serve import warmup

  fixture = pathlib.Path(__file__).parent / "fixtures" / "psgs_small.tsv"
  store = PassageStore(fixture, cache_dir=tmp_path / "cache")
  n, dim = len(store), 64
  vecs = np.random.default_rng(1).standard_normal((n, dim)).astype(np.float32)

  class QuestionEncoder:
    settings = {"code_bits": dim}

    def encode_questions(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
      return np.stack([vecs[len(t) % n] for t in texts])

  retriever = Retriever(QuestionEncoder(), BinaryIndex.from_arrays(pack_codes(vecs)), l=n)
  limits = Limits(max_k=40)
  assert warmup(retriever, 8, limits.max_k) == 4 * 2  # batch sizes 1, 2, 4, 8; k buckets 32, 40
  compiled = search_mod._rerank_block._cache_size()
  app = create_app(retriever, store, max_batch=8, max_wait_ms=2, limits=limits)
  bodies = [{"questions": [f"question {i}"] * (1 + i % 3), "k": 1 + (7 * i) % 40} for i in range(40)]
  responses = asyncio.run(_post_all(app, bodies))
  assert [r.status_code for r in responses] == [200] * 40
  assert all(len(h) == min(b["k"], n) for b, r in zip(bodies, responses) for h in r.json()["results"])
  assert search_mod._rerank_block._cache_size() == compiled  # nothing compiled while serving


def test_service_reads_passages_by_id_on_a_saved_ivf_index(tmp_path: pathlib.Path) -> None:
  """A saved ivf index renumbers its rows; the service still shows each hit's own passage."""
  import numpy as np

  from bpr_jax.codes import pack_codes
  from bpr_jax.index import BinaryIndex, build_index, save_index
  from bpr_jax.search import Retriever

  n, dim = 300, 64
  path = tmp_path / "psgs.tsv"
  ids = [str(100 + i) for i in range(n)]
  path.write_text("id\ttext\ttitle\n" + "".join(f"{p}\tText of {p}\tTitle {p}\n" for p in ids))
  store = PassageStore(path, cache_dir=tmp_path / "cache")
  vecs = np.random.default_rng(2).standard_normal((n, dim)).astype(np.float32)
  codes = pack_codes(vecs)
  save_index(tmp_path / "index", build_index(codes, "ivf", nlist=10, nprobe=10), codes, ids)
  index = BinaryIndex.load(tmp_path / "index")

  class QuestionEncoder:  # Question "about <id>" encodes exactly like passage <id>.
    settings = {"code_bits": dim}

    def encode_questions(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
      return np.stack([vecs[ids.index(t.split()[-1])] for t in texts])

  asked = [ids[0], ids[150], ids[299]]
  with TestClient(create_app(Retriever(QuestionEncoder(), index, l=n), store)) as client:
    resp = client.post("/search", json={"questions": [f"about {p}" for p in asked], "k": 5})
  assert resp.status_code == 200, resp.text
  for pid, hits in zip(asked, resp.json()["results"]):
    assert hits[0]["id"] == pid
    for h in hits:
      assert (h["title"], h["text"]) == (f"Title {h['id']}", f"Text of {h['id']}")

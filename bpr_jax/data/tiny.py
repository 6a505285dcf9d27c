"""A small synthetic retrieval dataset that a tiny BERT can learn in ~100 steps.

Each passage describes a made-up entity with four attributes:

  title: "zumabo"   text: "zumabo is a red fox from paris . zumabo likes to eat rice ."

A question names two attributes ("who is the red fox ?", "which fox is from
paris ?") and its answers are the entities having both; their passages are the
positives. Hard negatives share exactly one of the two named attributes, plain
negatives share neither. Dev questions use attribute pairs that never occur in
train questions, so dev retrieval measures generalisation rather than recall
of training questions. Everything is lowercase and every word is in the
written vocab.txt, so no token is [UNK].
"""
from __future__ import annotations

import csv
import json
import os
import random
from typing import Sequence

from bpr_jax.io import atomic_file

COLORS = ("red", "blue", "green", "yellow", "black", "white", "orange", "purple", "brown", "gray",
          "pink", "golden")
ANIMALS = ("fox", "cat", "dog", "owl", "bear", "wolf", "horse", "tiger", "rabbit", "eagle", "goat",
           "otter", "mouse", "duck")
CITIES = ("paris", "tokyo", "cairo", "lima", "oslo", "delhi", "rome", "quito", "berlin", "madrid",
          "dublin", "seoul", "sydney", "lagos")
FOODS = ("rice", "bread", "fish", "honey", "apples", "cheese", "beans", "grapes", "nuts", "corn",
         "eggs", "carrots")
ATTRIBUTES = {"color": COLORS, "animal": ANIMALS, "city": CITIES, "food": FOODS}
_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"
_MAX_MATCHES = 3

# (attribute a, attribute b) -> question templates.
_TEMPLATES = {
    ("color", "animal"): ("who is the {color} {animal} ?", "which {color} {animal} is it ?"),
    ("animal", "city"): ("which {animal} is from {city} ?", "who is the {animal} from {city} ?"),
    ("color", "city"): ("who is the {color} one from {city} ?", "which {color} animal is from {city} ?"),
    ("animal", "food"): ("which {animal} likes to eat {food} ?", "who is the {animal} that eats {food} ?"),
    ("city", "food"): ("who from {city} likes to eat {food} ?", "which animal from {city} eats {food} ?"),
    ("color", "food"): ("who is {color} and likes to eat {food} ?", "which {color} animal eats {food} ?"),
}
_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def _entity_names(rng: random.Random, n: int) -> list[str]:
  reserved = {w for values in ATTRIBUTES.values() for w in values}
  names: list[str] = []
  seen: set[str] = set()
  while len(names) < n:
    syllables = rng.choice((2, 3))
    name = "".join(rng.choice(_CONSONANTS) + rng.choice(_VOWELS) for _ in range(syllables))
    if name in seen or name in reserved:
      continue
    seen.add(name)
    names.append(name)
  return names


def _passage_text(entity: dict) -> str:
  return (f"{entity['name']} is a {entity['color']} {entity['animal']} from {entity['city']} . "
          f"{entity['name']} likes to eat {entity['food']} .")


def _ctx(entity: dict) -> dict:
  return {"title": entity["name"], "text": _passage_text(entity), "passage_id": entity["id"]}


def _questions(rng: random.Random, entities: Sequence[dict], count: int, banned: set,
               *, num_hard: int, num_neg: int) -> tuple[list[dict], set]:
  """Samples `count` questions whose (attribute pair, values) are not in `banned`.

  Keys (pair, values) are distinct while possible; once distinct keys run out
  (few passages, many questions) a key may repeat with another template.
  """
  pairs = sorted(_TEMPLATES)
  used: set = set()
  records: list[dict] = []
  attempts = 0
  while len(records) < count:
    attempts += 1
    if attempts > 400 * (count + 1):
      raise RuntimeError("tiny dataset: cannot find enough questions; use more passages")
    a, b = rng.choice(pairs)
    anchor = rng.choice(entities)
    key = (a, b, anchor[a], anchor[b])
    if key in banned or (key in used and attempts < 50 * (count + 1)):
      continue
    matches = [e for e in entities if e[a] == anchor[a] and e[b] == anchor[b]]
    if len(matches) > _MAX_MATCHES:
      continue
    used.add(key)
    hard = [e for e in entities if (e[a] == anchor[a]) != (e[b] == anchor[b])]
    others = [e for e in entities if e[a] != anchor[a] and e[b] != anchor[b]]
    template = rng.choice(_TEMPLATES[(a, b)])
    records.append({
        "question": template.format(**{a: anchor[a], b: anchor[b]}),
        "answers": [e["name"] for e in matches],
        "positive_ctxs": [_ctx(e) for e in matches],
        "negative_ctxs": [_ctx(e) for e in rng.sample(others, min(num_neg, len(others)))],
        "hard_negative_ctxs": [_ctx(e) for e in rng.sample(hard, min(num_hard, len(hard)))],
    })
  return records, used


def _write_json(path: str, records: list[dict]) -> None:
  with atomic_file(path) as f:
    json.dump(records, f, indent=1)
    f.write("\n")


def make_tiny_dataset(out_dir: str | os.PathLike, *, seed: int = 0, num_train: int = 512,
                      num_dev: int = 64, num_passages: int = 400) -> dict[str, str]:
  """Writes the tiny dataset under `out_dir` and returns its paths.

  Keys: train, dev (DPR retriever JSON), passages (DPR TSV id/text/title),
  qas (nq-test.csv layout over the dev questions), vocab_dir (holds vocab.txt
  and tokenizer_config.json for BertTokenizerFast). Deterministic in `seed`.
  """
  if num_passages < 50:
    raise ValueError(f"num_passages must be >= 50, got {num_passages}")
  out_dir = os.fspath(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  rng = random.Random(seed)
  names = _entity_names(rng, num_passages)
  entities = [{
      "id": str(i + 1), "name": names[i],
      **{attr: rng.choice(values) for attr, values in ATTRIBUTES.items()},
  } for i in range(num_passages)]
  dev, dev_keys = _questions(rng, entities, num_dev, set(), num_hard=5, num_neg=3)
  train, _ = _questions(rng, entities, num_train, dev_keys, num_hard=5, num_neg=3)

  paths = {
      "train": os.path.join(out_dir, "train.json"),
      "dev": os.path.join(out_dir, "dev.json"),
      "passages": os.path.join(out_dir, "psgs.tsv"),
      "qas": os.path.join(out_dir, "qas.csv"),
      "vocab_dir": os.path.join(out_dir, "vocab"),
  }
  _write_json(paths["train"], train)
  _write_json(paths["dev"], dev)
  with atomic_file(paths["passages"], newline="") as f:
    writer = csv.writer(f, delimiter="\t", lineterminator="\n")
    writer.writerow(["id", "text", "title"])
    for e in entities:
      writer.writerow([e["id"], _passage_text(e), e["name"]])
  with atomic_file(paths["qas"], newline="") as f:
    for r in dev:
      f.write(f"{r['question']}\t{r['answers']!r}\n")

  words: set[str] = set()
  for e in entities:
    words.update(_passage_text(e).split())
    words.add(e["name"])
  for r in train + dev:
    words.update(r["question"].split())
  for template_pair in _TEMPLATES.values():
    for template in template_pair:
      words.update(w for w in template.split() if "{" not in w)
  words.update(".?,;:")
  vocab = list(_SPECIAL_TOKENS) + sorted(words - set(_SPECIAL_TOKENS))
  os.makedirs(paths["vocab_dir"], exist_ok=True)
  with atomic_file(os.path.join(paths["vocab_dir"], "vocab.txt")) as f:
    f.write("\n".join(vocab) + "\n")
  with atomic_file(os.path.join(paths["vocab_dir"], "tokenizer_config.json")) as f:
    json.dump({"do_lower_case": True, "tokenizer_class": "BertTokenizer", "model_max_length": 512,
               "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]",
               "cls_token": "[CLS]", "mask_token": "[MASK]"}, f, indent=1)
  return paths

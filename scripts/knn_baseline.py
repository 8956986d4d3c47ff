"""The nearest-neighbour baseline a trained tagger must beat: each query gets the tags its neighbours carry.

    python scripts/knn_baseline.py TRAIN.jsonl GOLD.jsonl [GOLD.jsonl ...] -o preds.jsonl [--k 10 --top 4]
    instag eval --predictions preds.jsonl --gold GOLD.jsonl ... -o eval/knn

Every query (train and gold) is embedded with all-MiniLM-L6-v2 (the copy instag's normalization uses,
first 128 word pieces, unit vectors); a gold query's k nearest train queries by cosine vote with their
teacher tags (a tag counts once per neighbour; ties by the summed similarity, then alphabetically) and
the ``top`` most voted become its prediction, written in the schema `instag tag` writes (model
``knn-k{k}-top{top}``). No training, no generation: what the train tags alone give.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from instag.select.data import load_tag_file, tag_strings  # noqa: E402
from instag.select.normalize import sentence_transformer_embedder  # noqa: E402


def records(path: Path) -> list[dict]:
    tf = load_tag_file(path)
    return [tf.records[i] for i in tf.usable]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("train", type=Path)
    ap.add_argument("gold", type=Path, nargs="+")
    ap.add_argument("-o", "--output", type=Path, required=True)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--top", type=int, default=4)
    args = ap.parse_args()
    train = records(args.train)
    gold = [r for g in args.gold for r in records(g)]
    embed = sentence_transformer_embedder(batch_size=64, max_seq_length=128)
    tv = np.asarray(embed([r["query"] for r in train]))
    gv = np.asarray(embed([r["query"] for r in gold]))
    sims = gv @ tv.T
    name = f"knn-k{args.k}-top{args.top}"
    with args.output.open("w", encoding="utf-8") as f:
        for r, row in zip(gold, sims):
            votes: dict[str, list[float]] = defaultdict(list)
            for j in np.argsort(-row)[: args.k]:
                for t in set(tag_strings(train[j], normalized=False)):
                    votes[t].append(float(row[j]))
            best = sorted(votes, key=lambda t: (-len(votes[t]), -sum(votes[t]), t))[: args.top]
            tags = [{"tag": t, "explanation": ""} for t in best]
            f.write(json.dumps({"id": r["id"], "source": r.get("source"), "query": r["query"], "tags": tags,
                                "raw": json.dumps(best), "model": name, "status": "ok", "error": None},
                               ensure_ascii=False) + "\n")
    print(f"{args.output}: {len(gold)} predictions from {len(train)} train queries ({name})")


if __name__ == "__main__":
    main()

"""The training mix of tagger v5: a continuation of tagger v4 (see scripts/tagger_v3_mix.py for v3 and v4).

    python scripts/tagger_v5_mix.py OUT.jsonl

Seed train minus the dev slice, with two changes of weight:
- every ShareGPT query (seed v2 and v3), where the shipped tagger is weakest; except that
- half of the seed v3 ShareGPT queries tagged `missing context` are left out (seeded): v3's teacher batches
  put it on 14.3% of its `standard` draw against 9.7% of v2's train and 6.0% of held_out_sharegpt, drawn
  the same way (cluster-even ShareGPT first turns), and v4 writes it on 23.7% of fresh ShareGPT turns;
- a seeded half of the v1-source queries (they have had three passes; half keeps them from being forgotten).
Order is train's; the trainer groups batches by length anyway.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SEED = REPO / "data/seed"
V3_FIRST_LINE = 4440  # queries.jsonl lines from here on were drawn for seed v3 (scripts/seed_sample_v3.py)
V4_FIRST_LINE = 8640  # and from here on for seed v4 (scripts/seed_sample_v4.py), tagged after this mix was made
MIX_SEED = 20261203
OVER_TAG = "missing context"


def main(out: str) -> int:
    order = {json.loads(l)["id"]: n for n, l in enumerate(open(SEED / "queries.jsonl", encoding="utf-8"))}
    dev = {json.loads(l)["id"] for l in open(SEED / "dev.jsonl", encoding="utf-8") if l.strip()}
    lines = [l for l in open(SEED / "train.jsonl", encoding="utf-8") if l.strip()]
    records = [json.loads(l) for l in lines]

    def group(r: dict) -> str:
        if r["source"] != "sharegpt":
            return "v1 sources"
        if order[r["id"]] < V3_FIRST_LINE:
            return "v2 sharegpt"
        return "v3 sharegpt " + OVER_TAG if OVER_TAG in {t["tag"] for t in r["tags"]} else "v3 sharegpt"

    groups: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        if r["id"] not in dev and order[r["id"]] < V4_FIRST_LINE:
            groups.setdefault(group(r), []).append(i)
    rng = random.Random(MIX_SEED)
    keep = set(groups["v2 sharegpt"]) | set(groups["v3 sharegpt"])
    for name in ("v3 sharegpt " + OVER_TAG, "v1 sources"):
        keep |= set(rng.sample(groups[name], round(len(groups[name]) / 2)))
    with open(out, "w", encoding="utf-8") as f:
        f.writelines(line for i, line in enumerate(lines) if i in keep)
    counts = {name: len(keep & set(ids)) for name, ids in groups.items()}
    print(f"{out}: {len(keep)} queries ({', '.join(f'{k} {v}' for k, v in counts.items())})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

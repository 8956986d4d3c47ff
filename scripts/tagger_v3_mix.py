"""The training mix of tagger v3: a continuation of tagger v2 (one epoch on seed v2 train minus dev).

    python scripts/tagger_v3_mix.py OUT.jsonl [--other-half]

--other-half writes tagger v4's mix, a continuation of v3: the same seed v3 and v1-source queries and the
half of v2's ShareGPT that v3 left out, so every train query has now had at least two passes.

Seed train minus the dev slice, where v2 already trained once on all of v2: every seed v3 query (new to
the model), every query from the v1 sources (a second pass: they are the ones whose held_out score
dropped with v2), and a seeded half of v2's ShareGPT queries (a second pass for some, so the new data
weighs most). Order is train's; the trainer groups batches by length anyway.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SEED = REPO / "data/seed"
V3_FIRST_LINE = 4440  # queries.jsonl lines from here on were drawn for seed v3 (scripts/seed_sample_v3.py)
V4_FIRST_LINE = 8640  # and from here on for seed v4 (scripts/seed_sample_v4.py), which these mixes predate
MIX_SEED = 20261202


def main(out: str, v2_sharegpt_share: float = 0.5, other_half: bool = False) -> int:
    order = {json.loads(l)["id"]: n for n, l in enumerate(open(SEED / "queries.jsonl", encoding="utf-8"))}
    dev = {json.loads(l)["id"] for l in open(SEED / "dev.jsonl", encoding="utf-8") if l.strip()}
    lines = [l for l in open(SEED / "train.jsonl", encoding="utf-8") if l.strip()]
    v2_sharegpt = [i for i, l in enumerate(lines) if (r := json.loads(l))["id"] not in dev
                   and r["source"] == "sharegpt" and order[r["id"]] < V3_FIRST_LINE]
    keep_v2 = set(random.Random(MIX_SEED).sample(v2_sharegpt, round(len(v2_sharegpt) * v2_sharegpt_share)))
    counts = {"seed v3": 0, "v1 sources": 0, "v2 sharegpt": 0}
    with open(out, "w", encoding="utf-8") as f:
        for i, line in enumerate(lines):
            r = json.loads(line)
            if r["id"] in dev or order[r["id"]] >= V4_FIRST_LINE:
                continue
            if order[r["id"]] >= V3_FIRST_LINE:
                counts["seed v3"] += 1
            elif r["source"] != "sharegpt":
                counts["v1 sources"] += 1
            elif (i in keep_v2) != other_half:
                counts["v2 sharegpt"] += 1
            else:
                continue
            f.write(line)
    print(f"{out}: {sum(counts.values())} queries ({', '.join(f'{k} {v}' for k, v in counts.items())})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], other_half="--other-half" in sys.argv[2:]))

"""Draw the distillation seed set: 1,500 queries from the shared pool, stratified by source, fixed seed.

    python scripts/seed_sample.py            # writes data/seed/queries.jsonl

Per-source quotas cover every kind of task in the pool (math word problems, code generation, tool use,
role play, real user prompts, writing and everyday tasks). 20% of each source's draw is the held-out
evaluation split (300 queries), never trained on. Queries longer than 1,500 characters are left out
(they would be truncated in training anyway). The output order is shuffled so that every batch of the
hand-written teacher tags mixes sources.
"""

from __future__ import annotations

import json
import random
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from instag.select.pool import default_raw_dir, iter_pool  # noqa: E402

SEED = 20231117
MAX_CHARS = 1500
QUOTAS = {  # 1,500 in all
    "gsm8k": 250,
    "gpteacher-codegen": 300,
    "gpteacher-toolformer": 200,
    "gpteacher-roleplay": 200,
    "instructionwild": 350,
    "self-instruct-user": 120,
    "self-instruct-seed": 80,
}
HELD_OUT_SHARE = 0.2


def main() -> None:
    by_source: dict[str, list[dict]] = {}
    for rec in iter_pool(default_raw_dir()):
        if len(rec["query"]) <= MAX_CHARS:
            by_source.setdefault(rec["source"], []).append(rec)
    rng = random.Random(SEED)
    chosen = []
    for source, quota in QUOTAS.items():
        pool = sorted(by_source[source], key=lambda r: r["id"])
        picked = rng.sample(pool, quota)
        n_held = round(quota * HELD_OUT_SHARE)
        for k, rec in enumerate(picked):
            chosen.append({**rec, "split": "held_out" if k < n_held else "train"})
    rng.shuffle(chosen)
    out = REPO / "data" / "seed" / "queries.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in chosen), encoding="utf-8")
    print(f"wrote {out}: {len(chosen)} queries", dict(Counter(r["split"] for r in chosen)))
    print(dict(Counter(r["source"] for r in chosen)))


if __name__ == "__main__":
    main()

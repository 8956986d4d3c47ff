"""Draw seed v4: 2,010 ShareGPT first turns as they come, for teacher tags (train only).

    pip install -e '.[seed]'          # langdetect, for seed v3's language rule
    python scripts/seed_sample_v4.py  # appends to data/seed/queries.jsonl after its first 8,640 lines

Rerunnable: the first 8,640 lines (seed v1-v3) are kept byte for byte and everything after them is drawn
again with a fixed seed from the same package; nothing is cached.

Seed v2 and v3 drew evenly across k-means clusters of the ShareGPT first turns, which weighs rare kinds of
request up and the common ones down. Seed v4 draws the way users' data comes: uniformly at random (seed
20261203) from the candidates, so the mix of short follow-ups, pasted documents and plain requests is
ShareGPT's own. Candidates are seed v3's (``seed_sample_v3``: at least 20 and at most 8,000 characters,
id and text, case and spacing ignored, in no earlier line; ``kind`` and ``lang`` by its rules), less the
1,000 fresh first turns that ``scripts/tagger_tag_shares.py`` measures taggers on, so that measurement
stays on queries no tagger trained on. The packaged file's non-English first turns were all drawn by seed
v3, so these are English.

Two draws, the second appended after the first (they were made and tagged in turn): 410 lines, the first
10 of which complete batch_173 (lines 8,601-8,650) and the rest batches 174-181; then 1,600 more (lines
9,051-10,650, batches 182-213), drawn the same way from the candidates the first left. Every line is
``train``.
"""

from __future__ import annotations

import random
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from seed_sample_v2 import dumps, kept_prefix, norm  # noqa: E402
from seed_sample_v3 import kind_of, language, new_first_turns  # noqa: E402
from tagger_tag_shares import fresh_queries  # noqa: E402

SEED = 20261203
V3_LINES = 8640
N_TRAIN = 410
N_MORE = 1600  # the second draw
SEED_DIR = REPO / "data" / "seed"


def main() -> None:
    path = SEED_DIR / "queries.jsonl"
    kept, taken_ids, taken_texts = kept_prefix(path, V3_LINES)
    fresh, _ = fresh_queries()
    taken_ids |= {r["id"] for r in fresh}
    taken_texts |= {norm(r["query"]) for r in fresh}

    cands = list(new_first_turns(taken_ids, taken_texts))
    rng = random.Random(SEED)
    picked = rng.sample(cands, N_TRAIN)
    first = {r["id"] for r in picked}  # the second draw takes from what the first left: its 410 stay as they were
    picked += rng.sample([r for r in cands if r["id"] not in first], N_MORE)
    new = []
    for r in picked:
        lang = language(r["query"])
        new.append({"id": r["id"], "source": r["source"], "query": r["query"], "split": "train",
                    "kind": kind_of(r["query"], lang), "lang": lang})
    assert len({r["id"] for r in new}) == len(new)
    path.write_bytes(b"\n".join(kept) + b"\n" + "".join(dumps(r) + "\n" for r in new).encode("utf-8"))
    print(f"wrote {path}: {V3_LINES} v1-v3 + {len(new)} new (lines {V3_LINES + 1}-{V3_LINES + len(new)}) "
          f"of {len(cands)} candidates; kinds {dict(Counter(r['kind'] for r in new))}; median chars "
          f"{sorted(len(r['query']) for r in new)[len(new) // 2]}")


if __name__ == "__main__":
    main()

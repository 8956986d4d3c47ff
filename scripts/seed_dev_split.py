"""A dev slice held out of seed train, for choosing recipes and checkpoints (never the held-out files).

    python scripts/seed_dev_split.py OUT_DIR     # writes OUT_DIR/train_fit.jsonl and OUT_DIR/dev.jsonl

The draw was made once from seed v2's train.jsonl (seed 20261202): 150 ShareGPT queries and 100 from the
other sources, each source in proportion to its share of train, and is committed as
``data/seed/dev.jsonl``; while that file exists its ids are the dev slice (train grows with new seed
batches, a new draw would not give the same slice). ``train_fit.jsonl`` is train minus dev, in train's
order: what tagger v2 trained on while train.jsonl was seed v2's 3,740 queries (it grew with seed v3).
"""

from __future__ import annotations

import json
import random
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "data/seed/train.jsonl"
DEV = REPO / "data/seed/dev.jsonl"
DEV_SEED = 20261202
N_SHAREGPT = 150
N_OTHER = 100


def draw(lines: list[str]) -> set[int]:
    by_source: dict[str, list[int]] = defaultdict(list)
    for i, line in enumerate(lines):
        by_source[json.loads(line)["source"]].append(i)
    rng = random.Random(DEV_SEED)
    keep = set(rng.sample(by_source.pop("sharegpt"), N_SHAREGPT))
    other = sum(len(v) for v in by_source.values())
    for source in sorted(by_source):
        idx = by_source[source]
        keep.update(rng.sample(idx, max(1, round(N_OTHER * len(idx) / other))))
    return keep


def main(out_dir: str) -> int:
    lines = [line for line in TRAIN.read_text(encoding="utf-8").split("\n") if line.strip()]
    if DEV.exists():
        dev_ids = {json.loads(line)["id"] for line in DEV.read_text(encoding="utf-8").split("\n") if line.strip()}
        keep = {i for i, line in enumerate(lines) if json.loads(line)["id"] in dev_ids}
    else:
        keep = draw(lines)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "dev.jsonl").write_text("".join(lines[i] + "\n" for i in sorted(keep)), encoding="utf-8")
    (out / "train_fit.jsonl").write_text("".join(l + "\n" for i, l in enumerate(lines) if i not in keep),
                                         encoding="utf-8")
    print(f"{out}/dev.jsonl: {len(keep)} queries; {out}/train_fit.jsonl: {len(lines) - len(keep)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else str(REPO / "data/seed")))

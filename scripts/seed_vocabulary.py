"""List the teacher's most used tags in data/seed/seed_tags.jsonl as data/seed/vocabulary.md.

    python scripts/seed_vocabulary.py [--top 150]

The list is for taggers of new batches to reuse existing tags (see the tag style guide in
data/seed/README.md); it only counts tags the teacher wrote, it creates none.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

SEED = Path(__file__).resolve().parents[1] / "data" / "seed"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--top", type=int, default=150)
    args = ap.parse_args()
    lines = (SEED / "seed_tags.jsonl").read_text(encoding="utf-8").split("\n")
    recs = [json.loads(line) for line in lines if line.strip()]
    counts = Counter(t["tag"] for r in recs for t in r["tags"])
    rows = "\n".join(f"| {i} | {tag} | {n} |" for i, (tag, n) in enumerate(counts.most_common(args.top), 1))
    (SEED / "vocabulary.md").write_text(
        f"# Seed tag vocabulary\n\nThe {args.top} most used of the {len(counts)} tags in `seed_tags.jsonl` "
        f"({len(recs)} tagged queries), by number of queries; written by `scripts/seed_vocabulary.py`. Reuse "
        "a tag from here whenever it fits (see the tag style guide in README.md); ties keep first-use order.\n\n"
        f"| rank | tag | queries |\n|---|---|---|\n{rows}\n", encoding="utf-8")


if __name__ == "__main__":
    main()

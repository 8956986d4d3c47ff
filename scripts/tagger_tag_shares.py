"""How often a tagger writes its most frequent tags on real queries, against the teacher's shares.

    python scripts/tagger_tag_shares.py sample OUT.jsonl             # 1,000 ShareGPT first turns in no seed split
    python scripts/tagger_tag_shares.py compare TAGS.jsonl [TAGS.jsonl ...] -o shares.json

``sample`` draws (seed 20261202) 1,000 distinct ShareGPT first turns whose id and text are in none of
the first 8,640 lines of data/seed/queries.jsonl (seed v1-v3; seed v4 was drawn around these 1,000, so the
same 1,000 come out after it). ``compare`` takes tag files of those queries (one per tagger, as `instag tag`
writes them) and prints, for the 20 tags the first file writes most, the share of queries carrying each,
in every file and in the teacher's tags of held_out_sharegpt (the teacher's shares on real queries). A
tagger whose share of a tag is far above the teacher's over-predicts it (issue 26: the shipped adapter
put `role play` on 27.6% of real queries).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SEED = 20261202
N = 1000
TOP = 20
TEACHER = REPO / "data" / "seed" / "held_out_sharegpt.jsonl"


SEED_LINES = 8640  # seed v1-v3: the queries the 1,000 were drawn around


def fresh_queries() -> tuple[list[dict], int]:
    """The 1,000 fresh ShareGPT first turns, and the size of the pool they were drawn from."""
    from instag.select.pool import SHAREGPT_SOURCE, iter_sources

    def norm(text: str) -> str:
        return " ".join(text.lower().split())

    lines = (REPO / "data/seed/queries.jsonl").read_text(encoding="utf-8").split("\n")[:SEED_LINES]
    seeds = [json.loads(line) for line in lines if line.strip()]
    taken_ids, taken = {r["id"] for r in seeds}, {norm(r["query"]) for r in seeds}
    pool = []
    for r in iter_sources([SHAREGPT_SOURCE]):
        key = norm(r["query"])
        if r["id"] not in taken_ids and key not in taken and len(r["query"]) >= 20:
            taken.add(key)
            pool.append({"id": r["id"], "source": r["source"], "query": r["query"]})
    return random.Random(SEED).sample(pool, N), len(pool)


def sample(out: Path) -> None:
    picked, pool = fresh_queries()
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in picked), encoding="utf-8")
    print(f"{out}: {len(picked)} of {pool} ShareGPT first turns in no seed split")


def shares(path: Path) -> tuple[Counter, int]:
    from instag.select.data import load_tag_file, tag_strings

    tf = load_tag_file(path)
    recs = [tf.records[i] for i in tf.usable]
    return Counter(t for r in recs for t in set(tag_strings(r, normalized=False))), len(recs)


def compare(files: list[Path], out: Path | None) -> None:
    tables = [(f, *shares(f)) for f in files]
    teacher, n_teacher = shares(TEACHER)
    top = [t for t, _ in tables[0][1].most_common(TOP)]
    names = [f.stem for f in files]
    print(f"| tag | {' | '.join(f'{n} ({q} q)' for n, (_, _, q) in zip(names, tables))} | teacher, held_out_sharegpt "
          f"({n_teacher} q) |")
    print("|---|" + "---|" * (len(files) + 1))
    rows = []
    for tag in top:
        vals = [c[tag] / q for _, c, q in tables]
        rows.append({"tag": tag, "shares": dict(zip(names, vals)), "teacher": teacher[tag] / n_teacher})
        print(f"| {tag} | {' | '.join(f'{v:.1%}' for v in vals)} | {teacher[tag] / n_teacher:.1%} |")
    if out:
        out.write_text(json.dumps({"files": [str(f) for f in files], "teacher": str(TEACHER), "rows": rows}, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sample")
    s.add_argument("out", type=Path)
    c = sub.add_parser("compare")
    c.add_argument("files", type=Path, nargs="+")
    c.add_argument("-o", "--output", type=Path)
    args = ap.parse_args()
    if args.cmd == "sample":
        sample(args.out)
    else:
        compare(args.files, args.output)


if __name__ == "__main__":
    main()

"""Teacher self-agreement: a blind re-tag of 100 held-out ShareGPT queries, scored against the first tags.

    python scripts/seed_self_agreement.py sample    # write data/seed/self_agreement/queries.jsonl (ids + queries only)
    python scripts/seed_self_agreement.py score     # validate retag.jsonl, write retag_records.jsonl and metrics
    python scripts/seed_self_agreement.py sample v3 # the same for seed v3: data/seed/self_agreement_v3/
    python scripts/seed_self_agreement.py score v3

``v3`` (issue 27): 100 of the 200 ``held_out_long_multilingual`` queries (seed 20261202, drawn from
queries.jsonl's lines of that split, so the sample can be re-tagged before the first tags exist), re-tagged
by teacher instances that tagged none of them, under the seed v3 style guide.

The sample is fixed (seed 20261130, 100 of the 400 `held_out_sharegpt` queries, in file order) and
holds no tags, so a teacher instance can re-tag it without seeing the first answer. The teacher writes
``retag.jsonl`` by position, one ``{"id", "tags"}`` line per sample line, checked like a seed batch
(same id at the same line, 1 to 12 tags that round-trip through instag's parser). ``score`` converts it to
the schema `instag tag` writes (model ``llm-teacher-blind``) and scores it with `instag eval`'s scorer
against the committed tags of the same 100 queries; ``metrics.json`` there is what
``instag eval --ceiling`` takes.
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from seed_assemble import SEED, check_rows, dumps, jsonl_lines, teacher_record

OUT = SEED / "self_agreement"
SAMPLE_SEED = 20261130
SAMPLE_N = 100
GOLD = SEED / "held_out_sharegpt.jsonl"
BLIND = "llm-teacher-blind"
V3_SPLIT = "held_out_long_multilingual"


def use_v3() -> None:
    global OUT, SAMPLE_SEED, GOLD
    OUT, SAMPLE_SEED, GOLD = SEED / "self_agreement_v3", 20261202, SEED / f"{V3_SPLIT}.jsonl"


def sample() -> int:
    if GOLD.name == f"{V3_SPLIT}.jsonl":  # the split's queries, tagged or not yet
        gold = [q for q in map(json.loads, jsonl_lines(SEED / "queries.jsonl")) if q["split"] == V3_SPLIT]
    else:
        gold = [json.loads(line) for line in jsonl_lines(GOLD)]
    keep = set(random.Random(SAMPLE_SEED).sample(range(len(gold)), SAMPLE_N))
    OUT.mkdir(parents=True, exist_ok=True)
    rows = [{"id": g["id"], "source": g["source"], "query": g["query"]} for i, g in enumerate(gold) if i in keep]
    (OUT / "queries.jsonl").write_text("".join(dumps(r) + "\n" for r in rows), encoding="utf-8")
    print(f"{OUT / 'queries.jsonl'}: {len(rows)} queries of {len(gold)}")
    return 0


def check_retag(queries: list[dict], lines: list[str], name: str = "retag.jsonl") -> tuple[list[dict], list[str]]:
    """(records in `instag tag`'s schema, problems naming ``name:line``) for the teacher's re-tag lines,
    checked by position against the sample as a seed batch is against its queries."""
    problems: list[str] = []
    records = [teacher_record(q, tags, raw, BLIND) for q, tags, raw in check_rows(name, lines, queries, 0, problems)]
    if len(lines) != len(queries):
        problems.append(f"{name}: {len(lines)} rows for {len(queries)} queries")
    return records, problems


def score() -> int:
    queries = [json.loads(line) for line in jsonl_lines(OUT / "queries.jsonl")]
    records, problems = check_retag(queries, jsonl_lines(OUT / "retag.jsonl"))
    for p in problems:
        print("problem:", p)
    if problems:
        return 1
    from instag.distill.evaluate import score_run

    (OUT / "retag_records.jsonl").write_text("".join(dumps(r) + "\n" for r in records), encoding="utf-8")
    ids = {q["id"] for q in queries}
    with tempfile.TemporaryDirectory() as tmp:
        # The committed tags of the same 100 queries, under the held-out file's name so a ceiling lines up.
        gold = Path(tmp) / GOLD.name
        gold.write_text("".join(line + "\n" for line in jsonl_lines(GOLD) if json.loads(line)["id"] in ids))
        # "gold" keeps the held-out file's path: `instag eval --ceiling` lines gold files up by name.
        m = score_run(OUT / "retag_records.jsonl", gold, OUT, meta={
            "model": BLIND, "gold": str(GOLD.relative_to(REPO)),
            "gold_ids": f"the {len(ids)} ids of {(OUT / 'queries.jsonl').relative_to(REPO)}"})
    for level, v in m["levels"].items():
        print(f"{level:9s} P {v['precision']:.3f}  R {v['recall']:.3f}  F1 {v['f1']:.3f}")
    print(f"tags a query: blind {m['avg_pred_tags']:.2f}, first {m['avg_gold_tags']:.2f}; wrote {OUT}/metrics.json")
    return 0


if __name__ == "__main__":
    cmds = {"sample": sample, "score": score}
    if len(sys.argv) not in (2, 3) or sys.argv[1] not in cmds or sys.argv[2:] not in ([], ["v3"]):
        sys.exit(__doc__)
    if sys.argv[2:] == ["v3"]:
        use_v3()
    sys.exit(cmds[sys.argv[1]]())

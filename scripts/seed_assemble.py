"""Assemble the hand-written teacher tags into the seed set files; validate, never invent.

    python scripts/seed_assemble.py

Reads data/seed/batches/*.jsonl, where each line is {"id": ..., "tags": [{"tag", "explanation"}, ...]}
written by the teacher (a strong LLM reading each query). This script only checks and formats: every id
is a sampled query, no id is tagged twice, every answer round-trips through instag's own parser, and
each query has 1 to 12 tags. It writes, in the schema `instag tag` writes (model "llm-teacher"):
data/seed/seed_tags.jsonl (all tagged), data/seed/train.jsonl and data/seed/held_out.jsonl.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from instag.tagger.parse import STATUS_OK, parse_tags  # noqa: E402
from instag.tagger.prompt import format_answer  # noqa: E402

SEED = REPO / "data" / "seed"
TEACHER = "llm-teacher"


def main() -> int:
    queries = {}
    for line in (SEED / "queries.jsonl").read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        queries[rec["id"]] = rec
    records, problems = {}, []
    for batch in sorted((SEED / "batches").glob("*.jsonl")):
        for lineno, line in enumerate(batch.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            where = f"{batch.name}:{lineno}"
            try:
                item = json.loads(line)
            except json.JSONDecodeError as e:
                problems.append(f"{where}: malformed JSON ({e.msg})")
                continue
            qid, tags = item.get("id"), item.get("tags")
            if qid not in queries:
                problems.append(f"{where}: id {qid!r} is not a sampled query")
                continue
            if qid in records:
                problems.append(f"{where}: id {qid!r} tagged twice")
                continue
            if not isinstance(tags, list) or not 1 <= len(tags) <= 12:
                problems.append(f"{where}: {qid}: needs 1 to 12 tags")
                continue
            raw = format_answer(tags, "tags+explanations")
            parsed = parse_tags(raw)
            if parsed.status != STATUS_OK or [t["tag"] for t in parsed.tags] != [t["tag"] for t in tags]:
                problems.append(f"{where}: {qid}: tags do not round-trip through the parser (duplicate or bad tag?)")
                continue
            q = queries[qid]
            records[qid] = {"id": qid, "source": q["source"], "query": q["query"], "tags": parsed.tags, "raw": raw,
                            "model": TEACHER, "status": STATUS_OK, "error": None, "prompt_tokens": 0,
                            "completion_tokens": 0, "truncated": False, "split": q["split"]}
    for p in problems:
        print("problem:", p)
    ordered = [records[qid] for qid in queries if qid in records]  # the sampled order

    def write(name: str, recs: list[dict]) -> None:
        (SEED / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs), encoding="utf-8")

    write("seed_tags.jsonl", ordered)
    write("train.jsonl", [r for r in ordered if r["split"] == "train"])
    write("held_out.jsonl", [r for r in ordered if r["split"] == "held_out"])
    by_source = Counter(r["source"] for r in ordered)
    n_tags = [len(r["tags"]) for r in ordered]
    print(f"tagged {len(ordered)}/{len(queries)} queries; per source {dict(by_source)}; "
          f"splits {dict(Counter(r['split'] for r in ordered))}; "
          f"avg tags {sum(n_tags) / max(1, len(n_tags)):.2f}; unique tags {len({t['tag'] for r in ordered for t in r['tags']})}")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())

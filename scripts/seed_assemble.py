"""Assemble the hand-written teacher tags into the seed set files; validate, never invent.

    python scripts/seed_assemble.py                          # validate every batch and write the seed files
    python scripts/seed_assemble.py --check batches/batch_031.jsonl ...   # validate these batches only, write nothing

Reads data/seed/batches/batch_NNN.jsonl, where each line is {"id": ..., "tags": [{"tag", "explanation"}, ...]}
written by the teacher (a strong LLM reading each query). Batches map to queries.jsonl by position:
batch_NNN.jsonl holds exactly the ids of lines (NNN-1)*50+1 .. NNN*50 of queries.jsonl, in that order
(the last batch stops at the end of the file), so a tag can never land on the wrong query; a row whose
id differs from the query file's id at that position is reported as ``file:line`` and its whole batch
is rejected. All 30 seed v1 batches follow this rule (checked when it was introduced), so there is no
exception list. Each answer must also round-trip through instag's own parser with 1 to 12 tags.

It writes, in the schema `instag tag` writes (model "llm-teacher"), the tagged queries in query order:
seed_tags.jsonl (all), train.jsonl, held_out.jsonl, held_out_sharegpt.jsonl and held_out_long_multilingual.jsonl (one file per split), and
prints tagged/untagged counts per split: most seed v2 queries are not tagged yet, which is not an error.
Exit status 1 when any batch has a problem.
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from instag.tagger.parse import STATUS_OK, parse_tags  # noqa: E402
from instag.tagger.prompt import format_answer  # noqa: E402

SEED = REPO / "data" / "seed"
TEACHER = "llm-teacher"
BATCH_SIZE = 50
BATCH_NAME = re.compile(r"batch_(\d{3})\.jsonl")
SPLIT_FILES = {"train": "train.jsonl", "held_out": "held_out.jsonl", "held_out_sharegpt": "held_out_sharegpt.jsonl",
               "held_out_long_multilingual": "held_out_long_multilingual.jsonl"}


def jsonl_lines(path: Path) -> list[str]:
    # "\n" only: str.splitlines() would also split inside JSON strings at U+2028 / U+0085.
    text = path.read_text(encoding="utf-8")
    return text[:-1].split("\n") if text.endswith("\n") else (text.split("\n") if text else [])


def dumps(rec: dict) -> str:
    text = json.dumps(rec, ensure_ascii=False)
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029").replace("\u0085", "\\u0085")


def teacher_record(q: dict, tags: list[dict], raw: str, model: str = TEACHER) -> dict:
    """A teacher's answer for query ``q`` in the schema `instag tag` writes."""
    return {"id": q["id"], "source": q["source"], "query": q["query"], "tags": tags, "raw": raw, "model": model,
            "status": STATUS_OK, "error": None, "prompt_tokens": 0, "completion_tokens": 0, "truncated": False}


def check_rows(name: str, lines: list[str], expected: list[dict], first: int,
               problems: list[str]) -> list[tuple[dict, list[dict], str]]:
    """(query, parsed tags, raw answer) for each good row of a teacher file that tags ``expected`` (lines
    ``first + 1`` .. of queries.jsonl) by position; each bad row adds a problem naming ``name:line``."""
    rows = []
    for lineno, line in enumerate(lines, 1):
        where = f"{name}:{lineno}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(f"{where}: malformed JSON ({e.msg})")
            continue
        qid, tags = item.get("id"), item.get("tags")
        pos = first + lineno  # 1-based line of queries.jsonl this row must tag
        if lineno > len(expected):
            problems.append(f"{where}: id {qid!r} is past the batch's last query (queries.jsonl:{first + len(expected)})")
            continue
        if qid != expected[lineno - 1]["id"]:
            problems.append(f"{where}: id {qid!r} but queries.jsonl:{pos} is {expected[lineno - 1]['id']!r}")
            continue
        if not isinstance(tags, list) or not 1 <= len(tags) <= 12:
            problems.append(f"{where}: {qid}: needs 1 to 12 tags")
            continue
        raw = format_answer(tags, "tags+explanations")
        parsed = parse_tags(raw)
        if parsed.status != STATUS_OK or [t["tag"] for t in parsed.tags] != [t["tag"] for t in tags]:
            problems.append(f"{where}: {qid}: tags do not round-trip through the parser (duplicate or bad tag?)")
            continue
        rows.append((expected[lineno - 1], parsed.tags, raw))
    return rows


def check_batch(batch: Path, queries: list[dict], problems: list[str]) -> list[tuple[dict, list[dict], str]]:
    """(query, parsed tags, raw answer) for each row of a batch, or [] with problems when any row is wrong."""
    m = BATCH_NAME.fullmatch(batch.name)
    if not m or int(m.group(1)) == 0:
        problems.append(f"{batch.name}: not a batch name (batch_NNN.jsonl, NNN from 001)")
        return []
    first = (int(m.group(1)) - 1) * BATCH_SIZE  # 0-based index of the batch's first query
    expected = queries[first:first + BATCH_SIZE]
    lines = jsonl_lines(batch)
    bad = len(problems)
    rows = check_rows(batch.name, lines, expected, first, problems)
    if len(lines) < len(expected):
        problems.append(f"{batch.name}: {len(lines)} rows, but it must tag queries.jsonl:{first + 1}-"
                        f"{first + len(expected)} ({len(expected)} rows)")
    return rows if len(problems) == bad else []


def main(seed: Path = SEED) -> int:
    queries = [json.loads(line) for line in jsonl_lines(seed / "queries.jsonl")]
    records, problems = {}, []
    for batch in sorted((seed / "batches").glob("*.jsonl")):
        for q, tags, raw in check_batch(batch, queries, problems):
            rec = {**teacher_record(q, tags, raw), "split": q["split"]}
            for key in ("family", "kind", "lang"):  # why a query was drawn (v2 families, v3 kinds)
                if key in q:
                    rec[key] = q[key]
            records[q["id"]] = rec
    for p in problems:
        print("problem:", p)
    ordered = [records[q["id"]] for q in queries if q["id"] in records]  # the sampled order

    def write(name: str, recs: list[dict]) -> None:
        (seed / name).write_text("".join(dumps(r) + "\n" for r in recs), encoding="utf-8")

    write("seed_tags.jsonl", ordered)
    for split, name in SPLIT_FILES.items():
        write(name, [r for r in ordered if r["split"] == split])
    unknown = sorted({q["split"] for q in queries} - set(SPLIT_FILES))
    if unknown:
        print(f"problem: queries.jsonl has splits with no output file: {unknown}")
    per_split = Counter(q["split"] for q in queries)
    tagged = Counter(r["split"] for r in ordered)
    by_source = Counter(r["source"] for r in ordered)
    n_tags = [len(r["tags"]) for r in ordered]
    print(f"tagged {len(ordered)}/{len(queries)} queries; per source {dict(by_source)}; "
          f"avg tags {sum(n_tags) / max(1, len(n_tags)):.2f}; unique tags {len({t['tag'] for r in ordered for t in r['tags']})}")
    for split in per_split:
        print(f"  {split}: {tagged[split]} tagged, {per_split[split] - tagged[split]} untagged")
    return 1 if problems or unknown else 0


def check(batches: list[Path], seed: Path = SEED) -> int:
    """Validate some batches against the query file without writing anything (for a teacher at work)."""
    queries = [json.loads(line) for line in jsonl_lines(seed / "queries.jsonl")]
    problems: list[str] = []
    for batch in batches:
        rows = check_batch(batch, queries, problems)
        if rows:
            print(f"{batch.name}: {len(rows)} rows ok, {sum(len(t) for _, t, _ in rows) / len(rows):.2f} tags a query")
    for p in problems:
        print("problem:", p)
    return 1 if problems else 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--check"]:
        raise SystemExit(check([Path(a) for a in sys.argv[2:]]))
    raise SystemExit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else SEED))

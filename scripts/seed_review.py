"""Review aids for teacher batches (the lead reads every flagged row against its query before a commit).

    python scripts/seed_review.py data/seed/batches/batch_090.jsonl [...]

Prints, per batch: tags a query, its most used tags, and flags: a tag list repeated within the batch or
identical to an earlier batch's list (3+ tags), spellings the seed v3 style guide replaced (vocabulary.md,
*Canonical tags*), `missing context` without `follow-up request`/`multi-part input`, a non-English query
(seed v3 ``kind``) without a language tag, and explanations repeated word for word. It writes nothing and
judges nothing: the flags say where to look.
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SEED = REPO / "data" / "seed"
LANGUAGES = {"chinese", "korean", "japanese", "spanish", "french", "german", "portuguese", "italian", "dutch",
             "russian", "vietnamese", "arabic", "turkish", "polish", "indonesian", "hindi", "urdu", "thai",
             "hebrew", "persian", "swedish", "danish", "norwegian", "romanian", "greek", "czech", "catalan",
             "somali", "tagalog", "malay", "ukrainian", "hungarian", "finnish", "roman urdu", "hinglish"}


def replaced_spellings() -> set[str]:
    """The 'not' column of vocabulary.md's canonical table, less the spellings that are canonical in
    another row (`explanation` is right for concepts, wrong for procedures: not a spelling question)."""
    text = (SEED / "vocabulary.md").read_text(encoding="utf-8")
    section = text.split("## Canonical tags", 1)[-1].split("## Most used", 1)[0]
    out, canonical = set(), set()
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0] not in ("write", "---"):
            canonical.add(cells[0])
            out.update(t.strip() for t in cells[1].split(","))
    return out - canonical - {"code refactoring"}  # right for structure-only changes (the table says so)


def main(paths: list[str]) -> int:
    queries = [json.loads(line) for line in (SEED / "queries.jsonl").read_text(encoding="utf-8").split("\n") if line]
    by_id = {q["id"]: q for q in queries}
    replaced = replaced_spellings()
    batches = sorted((SEED / "batches").glob("batch_*.jsonl"))
    flagged = 0
    for path in map(Path, paths):
        earlier = {}
        for b in batches:
            if b.name < path.name:
                for line in b.read_text(encoding="utf-8").split("\n"):
                    if line.strip():
                        r = json.loads(line)
                        earlier.setdefault(tuple(t["tag"] for t in r["tags"]), r["id"])
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]
        lists = Counter(tuple(t["tag"] for t in r["tags"]) for r in rows)
        expl = Counter(t.get("explanation", "") for r in rows for t in r["tags"] if t.get("explanation"))
        tags = Counter(t["tag"] for r in rows for t in r["tags"])
        print(f"== {path.name}: {len(rows)} rows, {sum(len(r['tags']) for r in rows) / max(1, len(rows)):.2f} tags a "
              f"query; most used: {', '.join(f'{t} ({n})' for t, n in tags.most_common(8))}")
        for i, r in enumerate(rows, 1):
            names = [t["tag"] for t in r["tags"]]
            q = by_id.get(r["id"], {})
            notes = []
            if len(names) >= 3 and lists[tuple(names)] > 1:
                notes.append(f"list repeated {lists[tuple(names)]}x in the batch")
            if len(names) >= 3 and tuple(names) in earlier:
                notes.append(f"same list as {earlier[tuple(names)]}")
            if bad := [n for n in names if n in replaced]:
                notes.append(f"replaced spelling {bad}")
            if "missing context" in names and not {"follow-up request", "multi-part input"} & set(names):
                notes.append("missing context alone")
            if q.get("kind") == "non-english" and not LANGUAGES & set(names):
                notes.append(f"non-English ({q.get('lang')}) without a language tag")
            if rep := [t["explanation"] for t in r["tags"] if expl[t.get("explanation", "")] > 2
                       and not re.fullmatch(r"\W*", t.get("explanation", ""))]:
                notes.append(f"explanation repeated: {rep[0][:50]!r}")
            if notes:
                flagged += 1
                print(f"  {path.name}:{i} {r['id']}: {'; '.join(notes)}")
                print(f"      tags: {names}")
                print(f"      query: {q.get('query', '')[:200]!r}")
    print(f"{flagged} rows flagged")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

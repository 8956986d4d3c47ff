"""Print sampled seed queries START..END (for the teacher to read before writing a batch of tags).

    python scripts/seed_show.py 350 400          # 0-based, END excluded: lines 351-400 of queries.jsonl
    python scripts/seed_show.py 350 400 --full   # every query whole, line breaks kept (long pastes)

Toolformer queries are shown as their tool list and task only (their tool descriptions repeat).
A batch file data/seed/batches/batch_NNN.jsonl holds one {"id", "tags": [{"tag", "explanation"}]} line
per query; keep exactly one line per listed query, in order, so no tag list lands on the wrong query.
"""

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
a, b = int(sys.argv[1]), int(sys.argv[2])
full = "--full" in sys.argv[3:]
recs = [json.loads(line) for line in (REPO / "data" / "seed" / "queries.jsonl").open(encoding="utf-8")]
for i, r in enumerate(recs[a:b], a):
    q = r["query"]
    if full:
        print(f"=== {i} {r['id']} ({len(q)} chars) ===\n{q}\n")
    elif q.startswith("toolformer: enabled"):
        lines = q.split("\n")
        task = " / ".join(x for x in lines[2:] if x and not x.startswith((
            "A ", "Use this", "Useful", "Executes")) and not x.rstrip().endswith(")"))
        print(i, r["id"], "| TOOL", lines[1], "::", task[:300])
    else:
        print(i, r["id"], "|", q[:450].replace("\n", " / "))

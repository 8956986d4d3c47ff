"""Rewrite the statistics in data/seed/README.md from data/seed/seed_tags.jsonl with instag's own analysis.

    python scripts/seed_card.py

Everything between the "## Counts" and "## Licenses" headings is regenerated: per-source counts, average
tags per query, unique tags (raw and after rule aggregation: lowercase, special characters, Porter stems),
and the most frequent tags. Run it after scripts/seed_assemble.py.
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from instag.select.analyze import dataset_stats, group_tag_lists  # noqa: E402
from instag.select.data import load_tag_file  # noqa: E402
from instag.select.normalize import rule_key  # noqa: E402

SEED = REPO / "data" / "seed"


def main() -> int:
    tag_file = load_tag_file(SEED / "seed_tags.jsonl")
    groups = group_tag_lists([tag_file], by="source")
    sampled = Counter(json.loads(line)["source"] for line in (SEED / "queries.jsonl").open(encoding="utf-8"))
    held = Counter(json.loads(line)["source"] for line in (SEED / "held_out.jsonl").open(encoding="utf-8"))
    rows = ["| source | sampled | tagged | held out | avg tags/query | tags/query range | unique tags "
            "| unique after rule aggregation | most frequent |", "|---|---|---|---|---|---|---|---|---|"]
    all_lists: list[list[str]] = []
    for name in sorted(groups):
        lists, _ = groups[name]
        all_lists.extend(lists)
        st, freq = dataset_stats(name, lists)
        ruled = len({rule_key(t) for t in freq})
        top = ", ".join(t for t, _ in st.top_tags[:4])
        lo = min(st.tags_per_query_hist)
        rows.append(f"| {name} | {sampled[name]} | {st.queries} | {held[name]} | {st.avg_tags:.2f} | "
                    f"{lo}-{st.max_tags} | {st.unique_tags} | {ruled} | {top} |")
    st, freq = dataset_stats("all", all_lists)
    ruled = len({rule_key(t) for t in freq})
    top = ", ".join(f"{t} ({c})" for t, c in freq.most_common(15))
    section = "\n".join([
        "## Counts", "",
        f"Produced by `scripts/seed_card.py` (instag's own analysis code); `instag analyze "
        f"data/seed/seed_tags.jsonl --by source` shows the same per-source numbers with plots.", "",
        *rows, "",
        f"In all: {st.queries} queries, {sum(len(t) for t in all_lists)} tag occurrences, {st.unique_tags} unique "
        f"tags ({ruled} after rule aggregation), {st.avg_tags:.2f} tags per query (histogram "
        f"{dict(st.tags_per_query_hist)}); {st.singleton_tags} tags are used once (long tail "
        f"{st.long_tail_share:.0%}).", "",
        f"Most frequent: {top}.", "", ""])
    card = SEED / "README.md"
    text = card.read_text(encoding="utf-8")
    counts = re.compile(r"## Counts.*?(?=## Licenses)", flags=re.S)
    if not counts.search(text):
        raise SystemExit(f"{card}: no '## Counts' section before '## Licenses' to rewrite")
    card.write_text(counts.sub(lambda _: section, text), encoding="utf-8")
    print(section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Rewrite the statistics in data/seed/README.md from data/seed/seed_tags.jsonl with instag's own analysis.

    python scripts/seed_card.py            # rewrite the card's "## Counts" section and print it
    python scripts/seed_card.py --print    # print the section only, leave the card alone

Everything between the "## Counts" and "## Licenses" headings of the card is regenerated:

- one table per grouping, by source, by split (train / held_out / held_out_sharegpt) and by family of the
  seed v2 family draw (the ``family`` field of queries.jsonl): sampled, tagged, average tags per query,
  tags-per-query range, unique tags, unique tags after rule aggregation, most frequent tags;
- overall numbers for seed v1 (queries.jsonl lines 1-1,500), seed v2 (the appended lines) and both:
  queries, tag occurrences, unique tags before/after rule aggregation, the tags-per-query histogram, the
  long-tail share (tags used by one query) and the most frequent tags;
- the largest groups of spellings that rule aggregation merges, spellings it keeps apart although they
  are the same letters once spaces and punctuation are dropped (``song writing`` / ``songwriting``: Porter
  stems the joined word differently), and how many queries carry the tags the card's known weaknesses
  name (``follow-up request``, ``unclear intent`` ...).

Statistics come from ``instag.select.analyze.dataset_stats`` (as `instag analyze` computes them) and rule
aggregation from ``instag.select.normalize.rule_aggregate`` (lowercase, special characters to spaces, Porter
stems), so the card counts exactly what instag counts. The split and family of a tagged query are read from
queries.jsonl (seed_tags.jsonl has no ``family`` field), matched by id. Run it after scripts/seed_assemble.py.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from instag.select.analyze import dataset_stats  # noqa: E402
from instag.select.data import load_tag_file, tag_strings  # noqa: E402
from instag.select.normalize import rule_aggregate, rule_key  # noqa: E402

SEED = REPO / "data" / "seed"
V1_LINES = 1500
V2_LINES = 4440  # lines 1,501-4,440 are seed v2; seed v3 follows
SPLITS = ("train", "held_out", "held_out_sharegpt", "held_out_long_multilingual")
TOP_IN_TABLE = 4
TOP_OVERALL = 15
RULE_GROUPS = 15
WATCH_TAGS = ("follow-up request", "missing context", "unclear intent", "jailbreak attempt", "sensitive data")
_LETTERS = re.compile(r"[^0-9a-z]+")


def unique_after_rules(freq: Counter) -> int:
    """Unique tags once rule aggregation has merged spellings with the same rule key."""
    return len(freq) - len(rule_aggregate(freq))


def rule_groups(freq: Counter) -> list[tuple[str, list[str]]]:
    """Groups that rule aggregation merges: (head, all members by frequency), largest groups first."""
    members: dict[str, list[str]] = {}
    for tag, head in rule_aggregate(freq).items():
        members.setdefault(head, [head]).append(tag)
    groups = [(h, sorted(m, key=lambda t: (-freq[t], t))) for h, m in members.items()]
    return sorted(groups, key=lambda g: (-len(g[1]), -sum(freq[t] for t in g[1]), g[0]))


def top_tags(freq: Counter, n: int) -> list[tuple[str, int]]:
    """Most frequent tags, ties alphabetical: Counter.most_common keeps the order of count_tags' per-query
    sets, which changes with Python's string hashing, so the card would change from run to run."""
    return sorted(freq.items(), key=lambda kv: (-kv[1], kv[0]))[:n]


def split_spellings(freq: Counter) -> list[list[str]]:
    """Spellings with different rule keys that are the same letters and digits once spaces and punctuation go."""
    joined: dict[str, list[str]] = {}
    for tag in freq:
        joined.setdefault(_LETTERS.sub("", tag.lower()), []).append(tag)
    return [sorted(m, key=lambda t: (-freq[t], t)) for _, m in sorted(joined.items())
            if len({rule_key(t) for t in m}) > 1]


def group_table(title: str, key: str, names: list[str], rows: list[dict], sampled: Counter) -> list[str]:
    out = [f"**By {title}.**", "",
           f"| {key} | sampled | tagged | avg tags/query | tags/query range | unique tags "
           "| unique after rule aggregation | most frequent |", "|---|---|---|---|---|---|---|---|"]
    for name in names:
        lists = [r["tags"] for r in rows if r[key] == name]
        st, freq = dataset_stats(name, lists)
        rng = f"{min(st.tags_per_query_hist)}-{st.max_tags}" if lists else "-"
        top = ", ".join(t for t, _ in top_tags(freq, TOP_IN_TABLE))
        out.append(f"| {name} | {sampled[name]} | {st.queries} | {st.avg_tags:.2f} | {rng} | {st.unique_tags} | "
                   f"{unique_after_rules(freq)} | {top} |")
    return out + [""]


def overall(parts: dict[str, list[dict]]) -> list[str]:
    out = ["**Overall.**", "",
           "| part | queries | tag occurrences | avg tags/query | unique tags | unique after rule aggregation "
           "| tags used once (long tail) | tags-per-query histogram |", "|---|---|---|---|---|---|---|---|"]
    tops = []
    for name, rows in parts.items():
        lists = [r["tags"] for r in rows]
        st, freq = dataset_stats(name, lists)
        hist = ", ".join(f"{k}: {v}" for k, v in st.tags_per_query_hist.items())
        out.append(f"| {name} | {st.queries} | {sum(len(t) for t in lists)} | {st.avg_tags:.2f} | {st.unique_tags} | "
                   f"{unique_after_rules(freq)} | {st.singleton_tags} ({st.long_tail_share:.0%}) | {hist} |")
        tops.append(f"Most frequent, {name}: " + ", ".join(f"{t} ({c})" for t, c in top_tags(freq, TOP_OVERALL)) + ".")
    return out + [""] + [line for t in tops for line in (t, "")]


def section(rows: list[dict], queries: list[dict]) -> str:
    v1, v2, v3 = rows[:V1_LINES], rows[V1_LINES:V2_LINES], rows[V2_LINES:]
    sampled_kind = Counter(q["kind"] for q in queries if q.get("kind"))
    sampled_source = Counter(q["source"] for q in queries)
    sampled_split = Counter(q["split"] for q in queries)
    sampled_family = Counter(q["family"] for q in queries if q.get("family"))
    families = sorted(sampled_family, key=lambda f: (-sampled_family[f], f))
    lines = [
        "## Counts", "",
        "Produced by `scripts/seed_card.py` with instag's own analysis code (`instag.select.analyze.dataset_stats`, "
        "rule aggregation from `instag.select.normalize`); `instag analyze data/seed/seed_tags.jsonl --by source` "
        "shows the per-source numbers with plots. *Unique after rule aggregation*: spellings with the same rule key "
        "(lowercase, special characters to spaces, Porter stems) count once. A tag counts once per query.", "",
        *group_table("source", "source", sorted(sampled_source), rows, sampled_source),
        *group_table("split", "split", [s for s in SPLITS if sampled_split[s]], rows, sampled_split),
        *group_table("family (seed v2 family draw, all train)", "family", families, rows, sampled_family),
        *group_table("kind (seed v3 draw: length and language)", "kind", sorted(sampled_kind), rows, sampled_kind),
        *overall({"v1 (lines 1-1,500)": v1, f"v2 (lines 1,501-{V2_LINES:,})": v2,
                  f"v3 (lines {V2_LINES + 1:,}-{len(rows):,})": v3, "all": rows}),
    ]
    parts = {"v1": v1, "v2": v2, "v3": v3, "all": rows}
    freqs = {name: dataset_stats(name, [r["tags"] for r in part])[1] for name, part in parts.items()}
    lines += ["**Tags named in the known weaknesses**: queries carrying them, and their share of the part.", "",
              "| tag | " + " | ".join(parts) + " |", "|---|" + "---|" * len(parts)]
    for tag in WATCH_TAGS:
        cells = " | ".join(f"{freqs[n][tag]} ({freqs[n][tag] / len(p):.1%})" for n, p in parts.items())
        lines.append(f"| `{tag}` | {cells} |")
    lines.append("")
    freq = dataset_stats("all", [r["tags"] for r in rows])[1]
    v1_tags = set(dataset_stats("v1", [r["tags"] for r in v1])[1])
    groups = rule_groups(freq)
    lines += [f"**Spellings that rule aggregation merges** (all): {len(groups)} groups; the {RULE_GROUPS} "
              "largest, queries per spelling, *new* marks spellings v1 never used:", ""]
    for head, members in groups[:RULE_GROUPS]:
        spelled = ", ".join(f"`{t}` ({freq[t]}{'' if t in v1_tags else ', new'})" for t in members)
        lines.append(f"- {spelled}")
    apart = split_spellings(freq)
    lines += ["", f"**Spellings rule aggregation keeps apart** although they are the same letters without spaces and "
              f"punctuation ({len(apart)}): " + "; ".join(" / ".join(f"`{t}` ({freq[t]})" for t in m) for m in apart)
              + "."]
    return "\n".join(lines + ["", ""])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--print", action="store_true", help="print the section, do not rewrite the card")
    args = ap.parse_args()
    queries = [json.loads(line) for line in (SEED / "queries.jsonl").read_text(encoding="utf-8").split("\n")
               if line.strip()]
    tag_file = load_tag_file(SEED / "seed_tags.jsonl")
    by_id = {tag_file.records[i]["id"]: tag_file.records[i] for i in tag_file.usable}
    rows = [{"source": q["source"], "split": q["split"], "family": q.get("family"), "kind": q.get("kind"),
             "tags": tag_strings(by_id[q["id"]])} for q in queries if q["id"] in by_id]
    if len(rows) != len(queries):
        print(f"note: {len(queries) - len(rows)} of {len(queries)} queries have no usable tags; the v1/v2 cut "
              "assumes all are tagged", file=sys.stderr)
    text = section(rows, queries)
    if args.print:
        print(text)
        return 0
    card = SEED / "README.md"
    body = card.read_text(encoding="utf-8")
    counts = re.compile(r"## Counts.*?(?=## Licenses)", flags=re.S)
    if not counts.search(body):
        raise SystemExit(f"{card}: no '## Counts' section before '## Licenses' to rewrite")
    card.write_text(counts.sub(lambda _: text, body), encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

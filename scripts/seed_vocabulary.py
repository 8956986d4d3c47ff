"""List the teacher's most used tags in data/seed/seed_tags.jsonl as data/seed/vocabulary.md.

    python scripts/seed_vocabulary.py [--top 150]

The list is for taggers of new batches to reuse existing tags (see the tag style guide in
data/seed/README.md); it only counts tags the teacher wrote, it creates none.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

SEED = Path(__file__).resolve().parents[1] / "data" / "seed"

# The teacher's canonical choices between near-synonyms (seed v3 style guide, data/seed/README.md), written
# by hand from the self-agreement study: where two teacher instances split, which spelling every batch uses.
CANONICAL = """## Canonical tags (seed v3 style guide)

Where the blind re-tags split between near-synonyms, every batch from seed v3 on writes the first column.

| write | not | when |
|---|---|---|
| factual question | question answering, fact lookup | a question with a factual answer (who, when, what is the capital ...) |
| explanation | concept explanation, concept clarification | explain a concept, phenomenon or reason ("what is X", "why does Y") |
| how-to question | explanation, instructions request | how to do something: a procedure or steps ("how do I ...", "how to ...") |
| code explanation | explanation | explain code the query shows or names |
| code generation | code writing, code creation | write new code from a description |
| code modification | code generation, code refactoring | change, extend or convert code the query shows or refers to (refactoring for structure only: `code refactoring`) |
| code debugging | error fixing, bug fixing | find or fix an error in code, or explain an error message (add `error message` when one is pasted) |
| text rewriting | rewriting, paraphrasing, rephrasing | rewrite or improve a given text (`grammar correction` when only spelling and grammar) |
| story continuation | continuation, scene continuation | go on with a story, scene or text |
| song writing | songwriting, lyrics writing | write lyrics or a song |
| follow-up request | continuation request, conversation continuation | the query refers to an earlier turn the query does not hold ("make it shorter", "the second one", "continue", "again") |
| missing context | missing information | ONLY with `follow-up request` or a pasted-part message, when the query cannot be answered at all without the absent material ("summarize the article above" with no article) |
| missing input | missing text | an instruction whose own input was never given ("classify the following sentence:" and nothing follows) |
| multi-part input | document chunking, conversation setup | the user announces or sends one part of a longer input and asks to wait, acknowledge or remember |
| role play | persona setup, conversation setup | the assistant is asked to act as a person, character or system |
| unclear intent | no request | pasted material with no request at all |
| output language | language constraint | the answer must be in a named language other than the query's |
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--top", type=int, default=150)
    args = ap.parse_args()
    lines = (SEED / "seed_tags.jsonl").read_text(encoding="utf-8").split("\n")
    recs = [json.loads(line) for line in lines if line.strip()]
    counts = Counter(t["tag"] for r in recs for t in r["tags"])
    rows = "\n".join(f"| {i} | {tag} | {n} |" for i, (tag, n) in enumerate(counts.most_common(args.top), 1))
    (SEED / "vocabulary.md").write_text(
        f"# Seed tag vocabulary\n\nThe {args.top} most used of the {len(counts)} tags in `seed_tags.jsonl` "
        f"({len(recs)} tagged queries), by number of queries; written by `scripts/seed_vocabulary.py`. Reuse "
        "a tag from here whenever it fits (see the tag style guide in README.md); ties keep first-use order.\n\n"
        f"{CANONICAL}\n## Most used\n\n| rank | tag | queries |\n|---|---|---|\n{rows}\n", encoding="utf-8")


if __name__ == "__main__":
    main()

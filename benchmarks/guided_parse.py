"""Failed answers of the vLLM engine with and without guided decoding (the answer pattern after the prefill).

    python benchmarks/guided_parse.py [--models smollm2-135m-instruct,local] [--n 100] [--max-new-tokens 256]

Tags the first --n held-out seed queries with ``instag tag --engine vllm --guided`` and ``--no-guided``
for each model (one engine, the same prompt: only the grammar differs), counts answers that give no tag
(unparsed, or an empty list) and how many of those were cut at the token limit.
Prints a table and writes benchmarks/results/vllm_parse_failures.json.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import REPO, machine, write_json
from rich.console import Console
from rich.table import Table

from instag.io import iter_jsonl_records
from instag.tagger.backends.vllm_engine import VLLMBackend
from instag.tagger.models import resolve
from instag.tagger.parse import STATUS_EMPTY, STATUS_OK
from instag.tagger.run import TagOptions, tag_file


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", default="smollm2-135m-instruct,local")
    ap.add_argument("--input", default=str(REPO / "data" / "seed" / "held_out.jsonl"))
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "vllm_parse_failures.json"))
    args = ap.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "queries.jsonl"
        with open(args.input, encoding="utf-8") as f:
            src.write_text("".join(line for _, line in zip(range(args.n), f)), encoding="utf-8")
        for model in args.models.split(","):
            backend = VLLMBackend(resolve(model), max_new_tokens=args.max_new_tokens)
            for guided in (True, False):
                backend.guided = guided
                out = Path(tmp) / f"{model}-{guided}.jsonl"
                t0 = time.perf_counter()
                tag_file(src, out, TagOptions(model=model, engine="vllm", max_new_tokens=args.max_new_tokens,
                                              progress=False), backend=backend)
                recs = [rec for _, rec in iter_jsonl_records(out)]
                bad = [r for r in recs if r["status"] != STATUS_OK]
                rows.append({"model": model, "guided": guided, "n": len(recs), "parse_failures": len(bad),
                             "empty_lists": sum(r["status"] == STATUS_EMPTY for r in recs),
                             "failures_cut_at_token_limit": sum(r["completion_tokens"] >= args.max_new_tokens
                                                                for r in bad),
                             "tags_per_query": round(sum(len(r["tags"]) for r in recs) / len(recs), 2),
                             "seconds": round(time.perf_counter() - t0, 1)})
                print(rows[-1], flush=True)
            backend.close()
    write_json(args.out, {"benchmark": "vllm_parse_failures", "input": args.input, "n": args.n,
                          "max_new_tokens": args.max_new_tokens, "machine": machine(), "results": rows,
                          "date": time.strftime("%Y-%m-%d")})
    table = Table(title=f"vLLM parse failures, {args.n} held-out queries, max_new_tokens {args.max_new_tokens}")
    for col in ("model", "guided", "no tags", "empty lists", "cut at the limit", "tags/query"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r["model"], "yes" if r["guided"] else "no", f"{r['parse_failures']}/{r['n']}", str(r["empty_lists"]),
                      str(r["failures_cut_at_token_limit"]), f"{r['tags_per_query']:.2f}")
    Console().print(table)


if __name__ == "__main__":
    main()

"""Tagging throughput of the local transformers engine on the embedded model, by batch size.

    python benchmarks/tag_throughput.py [--model local] [--n 64] [--batch-sizes 1,8,32]

Prints a table and writes benchmarks/results/tag_throughput.json.
"""

from __future__ import annotations

import argparse
import statistics
import time

from common import REPO, machine, sample_queries, write_json
from rich.console import Console
from rich.table import Table

from instag.tagger.backends.hf import HFBackend
from instag.tagger.models import resolve
from instag.tagger.parse import STATUS_OK, parse_tags


def run(backend: HFBackend, queries: list[str], batch_size: int) -> dict:
    # Same length-sorted batching as `instag tag`.
    order = sorted(queries, key=len)
    t0 = time.perf_counter()
    gens = []
    for i in range(0, len(order), batch_size):
        gens += backend.generate(order[i:i + batch_size])
    dt = time.perf_counter() - t0
    out_tokens = sum(g.completion_tokens for g in gens)
    return {"seconds": dt, "queries_per_s": len(queries) / dt, "output_tokens_per_s": out_tokens / dt,
            "output_tokens": out_tokens, "parsed": sum(parse_tags(g.text).status == STATUS_OK for g in gens)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="local")
    ap.add_argument("--n", type=int, default=64, help="queries per run")
    ap.add_argument("--batch-sizes", default="1,8,32")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=1, help="runs per setting; the median is reported")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "tag_throughput.json"))
    args = ap.parse_args()

    queries = sample_queries(args.n)
    resolved = resolve(args.model)
    backend = HFBackend(resolved, max_new_tokens=args.max_new_tokens)
    backend.generate(queries[:2])  # warm-up
    rows = []
    for bs in (int(x) for x in args.batch_sizes.split(",")):
        runs = [run(backend, queries, bs) for _ in range(args.repeats)]
        med = sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]
        rows.append({"engine": "transformers", "batch_size": bs, **med,
                     "seconds_all": [r["seconds"] for r in runs]})
    table = Table(title=f"tag throughput: {resolved.name}, {args.n} queries, max_new_tokens {args.max_new_tokens}")
    for col in ("engine", "batch", "queries/s", "out tokens/s", "seconds", "parsed"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r["engine"], str(r["batch_size"]), f"{r['queries_per_s']:.2f}",
                      f"{r['output_tokens_per_s']:.1f}", f"{r['seconds']:.1f}", f"{r['parsed']}/{args.n}")
    Console().print(table)
    write_json(args.out, {"benchmark": "tag_throughput", "model": resolved.describe(), "n": args.n,
                          "max_new_tokens": args.max_new_tokens, "machine": machine(), "results": rows,
                          "median_of": args.repeats, "date": time.strftime("%Y-%m-%d"),
                          "speedup_vs_bs1": {r["batch_size"]: r["queries_per_s"] / rows[0]["queries_per_s"]
                                             for r in rows} if rows else {},
                          "mean_parsed": statistics.mean(r["parsed"] for r in rows) if rows else 0})


if __name__ == "__main__":
    main()

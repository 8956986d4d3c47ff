"""`instag tag --ray` with 1 and 2 workers vs the single-process path, on the same queries, one run.

    python benchmarks/ray_scale.py [--n 64] [--model local] [--cpus 2] [--batch-size 8]

Transformers engine (the shipped adapter by default). Each row tags the same N queries into a fresh
output. ``start_s``: from the call to the first record written (Ray: reading, actor start, model load;
single: model load); ``steady q/s``: records after the first batch over the time after it, the rate a
long run converges to. Ratios are against the single process. Prints a table and writes
benchmarks/results/ray_scale.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from common import REPO, machine, sample_queries, write_json
from rich.console import Console
from rich.table import Table


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--model", default="local")
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--rows-per-call", type=int, default=16, help="queries per engine call (Ray rows)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "ray_scale.json"))
    args = ap.parse_args()

    import ray

    from instag.tagger.distributed import RayOptions, tag_distributed
    from instag.tagger.run import TagOptions, make_backend, tag_file

    tmp = Path(tempfile.mkdtemp(prefix="ray_scale-"))
    src = tmp / "q.jsonl"
    src.write_text("".join(json.dumps({"id": f"q{i}", "query": q}) + "\n"
                           for i, q in enumerate(sample_queries(args.n))))
    opts = TagOptions(model=args.model, engine="transformers", batch_size=args.batch_size, progress=False)
    rows = []

    # Single process: the engine's start timed apart, then tag_file on the started engine.
    t0 = time.time()
    backend = make_backend(opts)
    start = time.time() - t0
    t1 = time.time()
    s = tag_file(src, tmp / "single.jsonl", opts, backend=backend)
    tag_s = time.time() - t1
    rows.append({"run": "single process", "workers": 0, "queries": s.tagged, "start_s": round(start, 1),
                 "wall_s": round(start + tag_s, 1), "steady_qps": round(s.tagged / tag_s, 3)})
    del backend

    t0 = time.time()
    ray.init(num_cpus=args.cpus, include_dashboard=False, object_store_memory=200 * 1024**2, log_to_driver=False)
    ray_init = time.time() - t0
    for w in (int(x) for x in args.workers.split(",")):
        stamps: list[tuple[float, int]] = []
        t0 = time.time()
        s = tag_distributed(src, tmp / f"ray{w}", opts, RayOptions(workers=w, rows_per_call=args.rows_per_call),
                            on_batch=lambda recs, _who: stamps.append((time.time(), len(recs))))
        wall = time.time() - t0
        first_t, first_n = stamps[0]
        steady = (s.tagged - first_n) / (stamps[-1][0] - first_t) if len(stamps) > 1 else 0.0
        rows.append({"run": f"ray, {w} worker{'s' if w > 1 else ''}", "workers": w, "queries": s.tagged,
                     "start_s": round(first_t - t0, 1), "wall_s": round(wall, 1), "steady_qps": round(steady, 3)})
    ray.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)

    base = rows[0]["steady_qps"]
    for r in rows:
        r["steady_vs_single"] = round(r["steady_qps"] / base, 2) if base else None
    t = Table(title=f"ray_scale: {args.n} queries, {args.model}, transformers batch {args.batch_size}, "
                    f"local Ray with {args.cpus} CPUs (ray.init {ray_init:.1f} s, not counted)")
    for col in ("run", "queries", "start s", "wall s", "steady q/s", "vs single"):
        t.add_column(col, justify="left" if col == "run" else "right")
    for r in rows:
        t.add_row(r["run"], str(r["queries"]), f"{r['start_s']:.1f}", f"{r['wall_s']:.1f}", f"{r['steady_qps']:.2f}",
                  f"{r['steady_vs_single']:.2f}x")
    Console().print(t)
    write_json(args.out, {"benchmark": "ray_scale", "n": args.n, "model": args.model, "engine": "transformers",
                          "batch_size": args.batch_size, "rows_per_call": args.rows_per_call, "ray_cpus": args.cpus, "ray_init_s": round(ray_init, 1),
                          "machine": machine(), "rows": rows})


if __name__ == "__main__":
    main()

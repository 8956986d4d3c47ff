"""`instag tag --ray` with 1 and 2 workers against the single-process path, on the same queries.

    python benchmarks/ray_scale.py [--n 512] [--engine vllm] [--repeats 3] [--workers 1,2] [--cpus 2]

Every row is the `instag tag` command a user runs, in a fresh process: a single process, then `--ray`
joining a local Ray started once by this script (its start is timed apart: a cluster outlives runs).
Each repeat tags the same N queries into fresh outputs, rows interleaved so that the machine's noise
falls on all of them alike; the table shows each row's median wall time over the repeats (min and max
beside it) and, from the medians, the single process's wall over the row's (``speedup``). Wall times
count everything a user waits for: imports, reading, the engines' start (for Ray also planning and
actor start) and tagging. Prints a table and writes benchmarks/results/ray_scale[-ENGINE].json.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, machine, sample_queries, write_json
from rich.console import Console
from rich.table import Table


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--model", default="local")
    ap.add_argument("--engine", default="vllm", choices=("vllm", "transformers"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray")
    ap.add_argument("--batch-size", type=int, default=8, help="transformers: queries a forward pass")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--out", default=None, help="default: benchmarks/results/ray_scale[-ENGINE].json")
    args = ap.parse_args()
    out = args.out or str(REPO / "benchmarks" / "results" /
                          ("ray_scale.json" if args.engine == "transformers" else f"ray_scale-{args.engine}.json"))

    import json

    import ray

    from instag.io import iter_tag_records

    tmp = Path(tempfile.mkdtemp(prefix="ray_scale-"))
    src = tmp / "q.jsonl"
    src.write_text("".join(json.dumps({"id": f"q{i}", "query": q}) + "\n"
                           for i, q in enumerate(sample_queries(args.n))))
    instag = [str(Path(sys.executable).with_name("instag"))]
    base = instag + ["tag", str(src), "--model", args.model, "--engine", args.engine, "--batch-size",
                     str(args.batch_size), "--quiet"]
    workers = [int(x) for x in args.workers.split(",")]
    runs: dict[str, list[float]] = {}

    t0 = time.time()
    ray.init(num_cpus=args.cpus, include_dashboard=False, object_store_memory=200 * 1024**2, log_to_driver=False)
    ray_init = time.time() - t0
    address = ray.get_runtime_context().gcs_address

    def run(name: str, cmd: list[str], rep: int) -> None:
        t0 = time.time()
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wall = time.time() - t0
        if proc.returncode != 0:
            sys.exit(f"{name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        runs.setdefault(name, []).append(wall)
        print(f"repeat {rep + 1}: {name} {wall:.1f} s", flush=True)

    for rep in range(args.repeats):
        run("single process", base + ["-o", str(tmp / f"single-{rep}.jsonl")], rep)
        for w in workers:
            run(f"ray, {w} worker{'s' if w > 1 else ''}", base + ["-o", str(tmp / f"ray{w}-{rep}"), "--ray",
                "--ray-address", address, "--workers", str(w)], rep)
    ray.shutdown()

    def tags(path: Path) -> dict[str, list]:
        return {r["id"]: r["tags"] for _, _, r in iter_tag_records(path)}

    # Same answers on every path (greedy), and how many queries each tagged: on the last repeat's outputs.
    last = args.repeats - 1
    outputs = {"single process": tmp / f"single-{last}.jsonl"}
    outputs.update({f"ray, {w} worker{'s' if w > 1 else ''}": tmp / f"ray{w}-{last}" for w in workers})
    got = {name: tags(path) for name, path in outputs.items()}
    shutil.rmtree(tmp, ignore_errors=True)
    single = got["single process"]

    rows = []
    for name, walls in runs.items():
        med = statistics.median(walls)
        rows.append({"run": name, "queries": len(got[name]), "wall_s_median": round(med, 1),
                     "wall_s": [round(x, 1) for x in walls], "queries_per_s": round(len(got[name]) / med, 2),
                     "speedup_vs_single": round(statistics.median(runs["single process"]) / med, 2),
                     "same_tags_as_single": sum(single.get(k) == v for k, v in got[name].items())})

    t = Table(title=f"ray_scale: {args.n} queries, {args.model}, {args.engine}, median of {args.repeats}, "
                    f"local Ray with {args.cpus} CPUs (its start, {ray_init:.1f} s, not counted)")
    for col in ("run", "queries", "wall s", "min-max", "q/s", "speedup"):
        t.add_column(col, justify="left" if col == "run" else "right")
    for r in rows:
        t.add_row(r["run"], str(r["queries"]), f"{r['wall_s_median']:.1f}",
                  f"{min(r['wall_s']):.0f}-{max(r['wall_s']):.0f}", f"{r['queries_per_s']:.2f}",
                  f"{r['speedup_vs_single']:.2f}x")
    Console(width=100).print(t)
    print("same tags as the single process (last repeat): "
          + ", ".join(f"{r['run']} {r['same_tags_as_single']}/{len(single)}" for r in rows[1:]))
    write_json(out, {"benchmark": "ray_scale", "n": args.n, "model": args.model, "engine": args.engine,
                     "repeats": args.repeats, "batch_size": args.batch_size, "ray_cpus": args.cpus,
                     "ray_init_s": round(ray_init, 1), "machine": machine(), "rows": rows})


if __name__ == "__main__":
    main()

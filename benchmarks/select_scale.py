"""Normalization and selection at scale on synthetic Zipf-distributed tags.

    python benchmarks/select_scale.py [--sizes 10000,100000,1000000] [--n 6000] [--embed random|minilm]

About 4 tags per query drawn from a Zipf-like vocabulary of 200K tags, a tenth of them also written in
spelling variants (so rule aggregation has work). Semantic aggregation uses random unit vectors by
default (the target excludes embedding time; ``--embed minilm`` embeds for real and reports that time
apart). Peak RSS is sampled per stage (generation, each normalization step, applying the map,
selection) by a thread reading /proc/self/statm. Prints a table and writes
benchmarks/results/select_scale.json.
"""

from __future__ import annotations

import argparse
import os
import resource
import threading
import time

import numpy as np
from common import REPO, machine, write_json
from rich.console import Console
from rich.table import Table

from instag.select.normalize import NormalizeParams, normalize, sentence_transformer_embedder
from instag.select.sample import SetStats, select_indices

VOCAB = 200_000


def synthetic(n: int, seed: int = 0) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, VOCAB + 1) ** 1.1
    weights /= weights.sum()
    names = [f"topic {k} task" for k in range(VOCAB)]
    variants = [f"Topic {k} Task!" if k % 10 == 3 else names[k] for k in range(VOCAB)]
    counts = rng.integers(1, 8, size=n)  # 1..7 tags, mean 4
    ids = rng.choice(VOCAB, size=int(counts.sum()), p=weights)
    use_variant = rng.random(ids.size) < 0.3
    out, pos = [], 0
    for c in counts.tolist():
        row = []
        for j in range(pos, pos + c):
            k = int(ids[j])
            row.append(variants[k] if use_variant[j] else names[k])
        out.append(row)
        pos += c
    return out


def random_embedder(dim: int = 384):
    def embed(texts: list[str]) -> np.ndarray:
        rng = np.random.default_rng(len(texts))
        v = rng.standard_normal((len(texts), dim)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    return embed


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


class StagePeaks:
    """Peak resident memory per named stage, sampled every ``interval`` seconds by a thread: ru_maxrss
    only gives the peak of the whole process."""

    def __init__(self, interval: float = 0.01):
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.peaks: dict[str, float] = {}
        self.current = "start"
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def _run(self) -> None:
        while not self._stop.is_set():
            self.note()
            time.sleep(self.interval)

    def note(self) -> None:
        gib = self.rss() / 2**30
        self.peaks[self.current] = max(self.peaks.get(self.current, 0.0), gib)

    def stage(self, name: str) -> None:
        self.note()  # the end of the previous stage counts for it
        self.current = name
        self.note()

    def __enter__(self) -> "StagePeaks":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.note()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--n", type=int, default=6000)
    ap.add_argument("--embed", choices=["random", "minilm"], default="random")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "select_scale.json"))
    args = ap.parse_args()
    embed = random_embedder() if args.embed == "random" else sentence_transformer_embedder()
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        with StagePeaks() as peaks:
            t0 = time.perf_counter()
            peaks.stage("generate")
            lists = synthetic(size)
            gen_s = time.perf_counter() - t0
            occurrences = sum(map(len, lists))
            t0 = time.perf_counter()
            tm = normalize(lists, NormalizeParams(), embed=embed, progress=peaks.stage)
            total_s = time.perf_counter() - t0
            embed_s = next(r.params.get("embedding_seconds", 0.0) for r in tm.reports if r.step == "semantic")
            peaks.stage("apply map")
            normalized = [tm.apply(t) for t in lists]
            peaks.stage("select")
            t0 = time.perf_counter()
            chosen = select_indices(normalized, args.n, "complexity", seed=0)
            select_s = time.perf_counter() - t0
        steps = {r.step: r.seconds for r in tm.reports}
        sel = SetStats.of([normalized[i] for i in chosen])
        pool = SetStats.of(normalized)
        rows.append({"queries": size, "occurrences": occurrences, "generate_s": round(gen_s, 2),
                     "steps_s": steps, "normalize_s_excl_embedding": round(total_s - embed_s, 2),
                     "embedding_s": embed_s, "unique_tags_before": tm.reports[0].tags_before,
                     "unique_tags_after": tm.reports[-1].tags_after, "select_s": round(select_s, 2),
                     "selected": len(chosen), "selected_unique_tags": sel.unique_tags,
                     "selected_avg_tags": round(sel.avg_tags, 2), "pool_avg_tags": round(pool.avg_tags, 2),
                     "peak_rss_gib": round(peak_rss_gib(), 2),
                     "stage_peak_rss_gib": {k: round(v, 2) for k, v in peaks.peaks.items()}})
        print(rows[-1], flush=True)
    t = Table(title=f"select scale (embeddings: {args.embed}; targets at 1M: normalize < 60 s, select < 10 s, < 4 GiB)")
    for col in ("queries", "occurrences", "frequency", "rule", "semantic", "association", "normalize (excl. emb.)",
                "tags before -> after", f"select {args.n}", "peak RSS GiB"):
        t.add_column(col, justify="right")
    for r in rows:
        s = r["steps_s"]
        t.add_row(f"{r['queries']:,}", f"{r['occurrences']:,}", f"{s['frequency']:.2f}", f"{s['rule']:.2f}",
                  f"{s['semantic']:.2f}", f"{s['association']:.2f}", f"{r['normalize_s_excl_embedding']:.2f}",
                  f"{r['unique_tags_before']:,} -> {r['unique_tags_after']:,}", f"{r['select_s']:.2f}",
                  f"{r['peak_rss_gib']:.2f}")
    Console().print(t)
    write_json(args.out, {"benchmark": "select_scale", "embed": args.embed, "machine": machine(), "results": rows,
                          "date": time.strftime("%Y-%m-%d")})


if __name__ == "__main__":
    main()

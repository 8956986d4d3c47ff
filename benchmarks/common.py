"""Shared helpers for the benchmark scripts: a fixed, mixed query sample and result writing."""

from __future__ import annotations

import json
import os
import platform
import random
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def sample_queries(n: int, seed: int = 0) -> list[str]:
    """n real queries, round-robin over the pool's sources (falls back to the shipped sample file)."""
    from instag.select.pool import default_raw_dir, iter_pool

    raw = default_raw_dir()
    if raw.exists():
        by_source: dict[str, list[str]] = defaultdict(list)
        for rec in iter_pool(raw):
            by_source[rec["source"]].append(rec["query"])
        rng = random.Random(seed)
        for qs in by_source.values():
            rng.shuffle(qs)
        out, k = [], 0
        while len(out) < n:
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

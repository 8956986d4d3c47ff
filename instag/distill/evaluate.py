"""Evaluate a tagger against teacher (gold) tags on held-out queries.

Precision, recall and F1 are micro-averaged over all (query, tag) pairs at three levels:
- ``exact``: the same tag string (whitespace-trimmed);
- ``rule``: the same rule key (lowercase, special characters to spaces, Porter stems; the rule
  aggregation step of normalization);
- ``semantic``: greedy one-to-one matching of tag embeddings within each query, pairs taken by
  descending cosine similarity while it is >= ``threshold`` (default 0.8 with all-MiniLM-L6-v2, which
  puts "python programming" / "programming in python" at 0.98 and "math" / "mathematics" at 0.91, and
  "creative writing" / "story writing" at 0.78, below it).
Within a query, each predicted tag matches at most one gold tag and vice versa at every level.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from instag.select.normalize import EmbedFn, rule_key, unit_rows

SEMANTIC_THRESHOLD = 0.8


@dataclass
class PRF:
    tp: int = 0
    n_pred: int = 0
    n_gold: int = 0

    @property
    def precision(self) -> float:
        return self.tp / self.n_pred if self.n_pred else 0.0

    @property
    def recall(self) -> float:
        return self.tp / self.n_gold if self.n_gold else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def to_dict(self) -> dict[str, float]:
        return {"precision": self.precision, "recall": self.recall, "f1": self.f1, "tp": self.tp,
                "n_pred": self.n_pred, "n_gold": self.n_gold}


def _dedupe(tags: Sequence[str], key: Callable[[str], str]) -> list[str]:
    return list(dict.fromkeys(key(t) for t in tags if t.strip()))


def match_by_key(pred: Sequence[str], gold: Sequence[str], key: Callable[[str], str]) -> int:
    """Matches when tags are compared by ``key`` (one-to-one: keys de-duplicated within a side)."""
    return len(set(_dedupe(pred, key)) & set(_dedupe(gold, key)))


def match_semantic(pred: Sequence[str], gold: Sequence[str], vec: dict[str, np.ndarray],
                   threshold: float = SEMANTIC_THRESHOLD) -> int:
    """Greedy one-to-one matching by descending cosine similarity >= threshold."""
    pred, gold = _dedupe(pred, str.strip), _dedupe(gold, str.strip)
    if not pred or not gold:
        return 0
    sims = np.array([[float(vec[p] @ vec[g]) for g in gold] for p in pred])
    pairs = sorted(((sims[i, j], i, j) for i in range(len(pred)) for j in range(len(gold))), reverse=True)
    used_p, used_g, n = set(), set(), 0
    for s, i, j in pairs:
        if s < threshold:
            break
        if i not in used_p and j not in used_g:
            used_p.add(i)
            used_g.add(j)
            n += 1
    return n


def score(preds: Sequence[Sequence[str]], golds: Sequence[Sequence[str]], embed: EmbedFn | None,
          threshold: float = SEMANTIC_THRESHOLD) -> dict[str, PRF]:
    """Micro P/R/F1 at the three levels for aligned lists of predicted and gold tag lists."""
    levels = {"exact": PRF(), "rule": PRF(), "semantic": PRF()}
    vec: dict[str, np.ndarray] = {}
    if embed is not None:
        vocab = sorted({t.strip() for tags in list(preds) + list(golds) for t in tags if t.strip()})
        if vocab:
            vec = dict(zip(vocab, unit_rows(embed(vocab))))
    for pred, gold in zip(preds, golds):
        for name, key in (("exact", str.strip), ("rule", rule_key), ("semantic", str.strip)):
            prf = levels[name]
            if name == "semantic" and embed is None:
                continue
            prf.n_pred += len(_dedupe(pred, key))
            prf.n_gold += len(_dedupe(gold, key))
            prf.tp += match_semantic(pred, gold, vec, threshold) if name == "semantic" else match_by_key(pred, gold, key)
    return levels


def evaluate_predictions(pred_file: Path, gold_file: Path, embed: EmbedFn | None,
                         threshold: float = SEMANTIC_THRESHOLD) -> dict[str, Any]:
    """Metrics for a predictions tag file against a gold tag file (matched by id)."""
    from instag.select.data import load_tag_file, tag_strings

    gold = load_tag_file(gold_file)
    pred = {str(r["id"]): r for r in load_tag_file(pred_file).records}
    golds, preds, failures, missing = [], [], 0, 0
    for i in gold.usable:
        g = gold.records[i]
        p = pred.get(str(g["id"]))
        if p is None:
            missing += 1
            continue
        if p.get("status") != "ok":
            failures += 1
        golds.append(tag_strings(g, normalized=False))
        preds.append(tag_strings(p, normalized=False) if p.get("status") == "ok" else [])
    levels = score(preds, golds, embed, threshold)
    n = len(golds)
    return {
        "queries": n, "missing_predictions": missing, "parse_failures": failures,
        "parse_failure_rate": failures / n if n else 0.0,
        "avg_pred_tags": sum(map(len, preds)) / n if n else 0.0,
        "avg_gold_tags": sum(map(len, golds)) / n if n else 0.0,
        "semantic_threshold": threshold,
        "levels": {k: v.to_dict() for k, v in levels.items()},
    }


def run_eval(model: str, gold_file: Path, out_dir: Path, *, batch_size: int = 8, max_new_tokens: int = 256,
             threshold: float = SEMANTIC_THRESHOLD, embed: EmbedFn | None = None, progress: bool = True,
             **tag_kw: Any) -> dict[str, Any]:
    """Tag the gold queries with ``model`` (resumable, into ``out_dir/predictions.jsonl``) and score them;
    writes ``metrics.json`` and ``report.md``."""
    from instag.select.normalize import sentence_transformer_embedder
    from instag.tagger.run import TagOptions, tag_file

    out_dir.mkdir(parents=True, exist_ok=True)
    preds = out_dir / "predictions.jsonl"
    t0 = time.time()
    summary = tag_file(gold_file, preds, TagOptions(model=model, batch_size=batch_size, max_new_tokens=max_new_tokens,
                                                    progress=progress, **tag_kw))
    metrics = evaluate_predictions(preds, gold_file, embed or sentence_transformer_embedder(), threshold)
    metrics.update(model=model, gold=str(gold_file), tag_seconds=round(summary.seconds, 2),
                   queries_per_s=summary.queries_per_second, seconds=round(time.time() - t0, 2),
                   date=time.strftime("%Y-%m-%d"))
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    from instag.distill.train import metrics_table

    (out_dir / "report.md").write_text(f"# Evaluation of `{model}` on `{gold_file}`\n\n{metrics['queries']} "
                                       f"held-out queries.\n\n{metrics_table(metrics)}\n")
    return metrics

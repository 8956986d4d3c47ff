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

When predicted tags carry a confidence, each metrics section also has ``calibration``
(:mod:`instag.distill.calibration`): reliability bins, ECE and a precision/recall curve over confidence
thresholds, judged with the same semantic matching.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from instag.distill.calibration import TagOutcomes, calibration_metrics, rank_correlation, tag_outcomes, write_plots
from instag.distill.matching import SEMANTIC_THRESHOLD, semantic_pairs, tag_vectors
from instag.distill.matching import dedupe as _dedupe
from instag.select.normalize import EmbedFn, rule_key


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


def match_by_key(pred: Sequence[str], gold: Sequence[str], key: Callable[[str], str]) -> int:
    """Matches when tags are compared by ``key`` (one-to-one: keys de-duplicated within a side)."""
    return len(set(_dedupe(pred, key)) & set(_dedupe(gold, key)))


def match_semantic(pred: Sequence[str], gold: Sequence[str], vec: dict[str, np.ndarray],
                   threshold: float = SEMANTIC_THRESHOLD) -> int:
    """Greedy one-to-one matching by descending cosine similarity >= threshold: the number of
    :func:`~instag.distill.matching.semantic_pairs` (which says which tags matched)."""
    return len(semantic_pairs(pred, gold, vec, threshold))


def score(preds: Sequence[Sequence[str]], golds: Sequence[Sequence[str]], embed: EmbedFn | None,
          threshold: float = SEMANTIC_THRESHOLD) -> dict[str, PRF]:
    """Micro P/R/F1 at the three levels for aligned lists of predicted and gold tag lists."""
    levels = {"exact": PRF(), "rule": PRF(), "semantic": PRF()}
    vec = tag_vectors(list(preds) + list(golds), embed) if embed is not None else {}
    for pred, gold in zip(preds, golds):
        for name, key in (("exact", str.strip), ("rule", rule_key), ("semantic", str.strip)):
            prf = levels[name]
            if name == "semantic" and embed is None:
                continue
            prf.n_pred += len(_dedupe(pred, key))
            prf.n_gold += len(_dedupe(gold, key))
            prf.tp += match_semantic(pred, gold, vec, threshold) if name == "semantic" else match_by_key(pred, gold, key)
    return levels


MAX_HIST = 8  # tags-per-query histograms put 8 and more in one bin
TOP_TAGS = 20  # rows kept in the over-predicted and most-missed lists
NO_SOURCE = "(none)"


def _as_list(x: Any) -> list:
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _memo_embedder(embed: EmbedFn | None, frame: pd.DataFrame) -> EmbedFn | None:
    """Embed every tag of the run once, so that scoring each source and gold file does not re-embed."""
    if embed is None:
        return None
    vocab = sorted({t.strip() for col in ("pred", "gold") for tags in frame[col] for t in tags if t.strip()})
    if not vocab:
        return embed
    vec = dict(zip(vocab, np.asarray(embed(vocab))))
    return lambda texts: np.stack([vec[t] for t in texts])


def load_pairs(pred_files: Path | Sequence[Path], gold_files: Path | Sequence[Path]) -> pd.DataFrame:
    """One row per usable gold record: gold file, id, source, prediction status (``ok``, ``unparsed``,
    ``empty``, ``error`` or ``missing``), predicted and gold tags (raw strings; [] unless status is ok),
    and ``pred_conf``, the predicted tags' confidences (None where unknown).
    Predictions from several files are matched by id, a later file winning."""
    from instag.select.data import load_tag_file, tag_confidences, tag_strings

    pred = {str(r["id"]): r for f in _as_list(pred_files) for r in load_tag_file(f).records}
    rows = []
    for gf in _as_list(gold_files):
        gold = load_tag_file(gf)
        for i in gold.usable:
            g = gold.records[i]
            p = pred.get(str(g["id"]))
            status = "missing" if p is None else str(p.get("status"))
            rows.append({"gold_file": str(gf), "id": str(g["id"]), "source": g.get("source") or NO_SOURCE,
                         "status": status, "model": None if p is None else p.get("model"),
                         "gold": tag_strings(g, normalized=False),
                         "pred": tag_strings(p, normalized=False) if status == "ok" else [],
                         "pred_conf": tag_confidences(p) if status == "ok" else []})
    return pd.DataFrame(rows, columns=["gold_file", "id", "source", "status", "model", "gold", "pred", "pred_conf"])


def tags_per_query(frame: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Mean and histogram (0 .. MAX_HIST, the last bin "8+") of tags per query, model and gold."""
    out = {}
    for side in ("pred", "gold"):
        n = frame[side].map(len)
        hist = n.clip(upper=MAX_HIST).value_counts().reindex(range(MAX_HIST + 1), fill_value=0)
        out[side] = {"mean": float(n.mean()) if len(n) else 0.0,
                     "hist": {(f"{k}+" if k == MAX_HIST else str(k)): int(v) for k, v in hist.items()}}
    return out


def complexity_spearman(frame: pd.DataFrame) -> float | None:
    """Spearman correlation of the model's and the teacher's tag counts per query. InsTag's complexity is a
    query's tag count and complexity-first sampling ranks by it, so this says how well the model's counts
    rank queries the way the teacher's do (None where either side's counts do not vary)."""
    return rank_correlation(list(frame["pred"].map(len)), list(frame["gold"].map(len)))


def tag_errors(frame: pd.DataFrame, top: int = TOP_TAGS) -> dict[str, list[dict[str, Any]]]:
    """Over-predicted and most-missed tags at the rule level (spelling variants counted together).

    Counts are queries: ``pred`` predicted the rule key, ``gold`` has it, ``matched`` both. A key is shown
    by its most frequent gold spelling (the model's where the gold never uses it)."""
    rows: list[dict[str, Any]] = []
    for pred, gold in zip(frame["pred"], frame["gold"]):
        pk, gk = set(_dedupe(pred, rule_key)), set(_dedupe(gold, rule_key))
        rows += [{"key": k, "pred": k in pk, "gold": k in gk, "matched": k in pk and k in gk} for k in pk | gk]
    if not rows:
        return {"over_predicted": [], "most_missed": []}
    counts = pd.DataFrame(rows).groupby("key")[["pred", "gold", "matched"]].sum().astype(int)

    def spelling(col: str) -> pd.Series:
        tags = pd.Series([t.strip() for tags in frame[col] for t in tags if t.strip()], dtype=object)
        return tags.groupby(tags.map(rule_key)).agg(lambda s: s.value_counts().index[0])
    counts.insert(0, "tag", spelling("gold").reindex(counts.index).fillna(spelling("pred")))
    over = counts[counts["pred"] > counts["gold"]].assign(excess=lambda d: d["pred"] - d["gold"])
    # the ratio is undefined for tags the gold never uses; JSON null, "new" in the report
    over["ratio"] = (over["pred"] / over["gold"].where(over["gold"] > 0)).round(2)
    over = over.sort_values(["excess", "pred", "tag"], ascending=[False, False, True]).head(top)
    missed = counts[counts["gold"] > counts["matched"]].assign(missed=lambda d: d["gold"] - d["matched"])
    missed["recall"] = (missed["matched"] / missed["gold"]).round(3)
    missed = missed.sort_values(["missed", "gold", "tag"], ascending=[False, False, True]).head(top)

    def records(d: pd.DataFrame) -> list[dict[str, Any]]:  # via JSON: NaN to null, numpy to Python numbers
        return json.loads(d.reset_index().to_json(orient="records"))
    return {"over_predicted": records(over), "most_missed": records(missed)}


def _basic(frame: pd.DataFrame, embed: EmbedFn | None, threshold: float) -> dict[str, Any]:
    """The keys metrics.json always had (queries, failures, mean tags, levels), plus status counts and
    tags per query."""
    scored = frame[frame["status"] != "missing"]
    n = len(scored)
    failures = int((scored["status"] != "ok").sum())
    levels = score(list(scored["pred"]), list(scored["gold"]), embed, threshold)
    tpq = tags_per_query(scored)
    return {
        "queries": n, "missing_predictions": int(len(frame) - n), "parse_failures": failures,
        "parse_failure_rate": failures / n if n else 0.0,
        "avg_pred_tags": tpq["pred"]["mean"], "avg_gold_tags": tpq["gold"]["mean"],
        "semantic_threshold": threshold,
        "levels": {k: v.to_dict() for k, v in levels.items()},
        "statuses": {str(k): int(v) for k, v in frame["status"].value_counts().sort_index().items()},
        "tags_per_query": tpq,
        "complexity_spearman": complexity_spearman(scored),
    }


def section_metrics(frame: pd.DataFrame, embed: EmbedFn | None, threshold: float = SEMANTIC_THRESHOLD,
                    top: int = TOP_TAGS) -> dict[str, Any]:
    """Metrics for a set of pairs: overall, per gold ``source``, and the over-predicted / missed tags;
    ``calibration`` (:mod:`instag.distill.calibration`) when a predicted tag has a confidence."""
    out = _basic(frame, embed, threshold)
    out["by_source"] = {str(src): _basic(g, embed, threshold) for src, g in frame.groupby("source", sort=True)}
    scored = frame[frame["status"] != "missing"]
    out["tags"] = tag_errors(scored, top)
    if "pred_conf" in scored:
        cal = calibration_metrics(list(scored["pred"]), list(scored["pred_conf"]), list(scored["gold"]), embed,
                                  threshold)
        if cal is not None:
            out["calibration"] = cal
    return out


def evaluate_predictions(pred_file: Path | Sequence[Path], gold_file: Path | Sequence[Path], embed: EmbedFn | None,
                         threshold: float = SEMANTIC_THRESHOLD, top: int = TOP_TAGS) -> dict[str, Any]:
    """Metrics for predictions tag file(s) against gold tag file(s), matched by id.

    With one gold file the metrics are that file's section; with several, the top-level keys are over all
    of them together and ``gold_files`` holds one section per file (each with its ``gold`` path)."""
    frame = load_pairs(pred_file, gold_file)
    embed = _memo_embedder(embed, frame)
    golds = _as_list(gold_file)
    out = section_metrics(frame, embed, threshold, top)
    if len(golds) > 1:
        out["gold_files"] = [dict(gold=str(g), **section_metrics(frame[frame["gold_file"] == str(g)], embed,
                                                                 threshold, top)) for g in golds]
    return out


def calibration_outcomes(pred_files: Path | Sequence[Path], gold_files: Path | Sequence[Path],
                         embed: EmbedFn | None = None, threshold: float = SEMANTIC_THRESHOLD) -> TagOutcomes:
    """Each predicted tag of saved predictions with its confidence and whether it is correct at the
    semantic level (a :class:`~instag.distill.calibration.TagOutcomes`), to fit a calibrator on.
    ``embed`` None: the default MiniLM embedder."""
    from instag.select.normalize import sentence_transformer_embedder

    frame = load_pairs(pred_files, gold_files)
    scored = frame[frame["status"] != "missing"]
    return tag_outcomes(list(scored["pred"]), list(scored["pred_conf"]), list(scored["gold"]),
                        embed or sentence_transformer_embedder(), threshold)


def _calibration_plots(metrics: dict[str, Any], gold_files: Path | Sequence[Path], out_dir: Path) -> None:
    """Plots of each gold file's calibration, named after the file's stem, recorded in its section."""
    golds = _as_list(gold_files)
    sections = metrics["gold_files"] if len(golds) > 1 else [metrics]
    used: set[str] = set()
    for g, sec in zip(golds, sections):
        cal = sec.get("calibration")
        if not cal:
            continue
        stem = base = Path(g).stem
        k = 1
        while stem in used:  # gold files of the same name in different folders
            k += 1
            stem = f"{base}_{k}"
        used.add(stem)
        cal["plots"] = write_plots(cal, out_dir, stem)


def load_ceiling(path: Path) -> dict[str, Any]:
    """The levels of a reference run's metrics.json (e.g. the teacher re-tagging the gold: its
    self-agreement), overall, per source and per gold file (by file name), to show beside the model."""
    try:
        m = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not a metrics.json of `instag eval` ({e})") from e
    if not isinstance(m, dict) or "levels" not in m:
        raise ValueError(f"{path}: not a metrics.json of `instag eval` (no 'levels')")

    def trim(x: dict[str, Any]) -> dict[str, Any]:
        return {**{k: x.get(k) for k in ("queries", "missing_predictions", "parse_failures", "avg_pred_tags",
                                         "avg_gold_tags")}, "levels": x["levels"],
                "by_source": {s: {"queries": v.get("queries"), "levels": v["levels"]}
                              for s, v in x.get("by_source", {}).items()}}
    out = {"file": str(path), "model": m.get("model"), "gold": m.get("gold"), **trim(m)}
    out["gold_files"] = {Path(g["gold"]).name: trim(g) for g in m.get("gold_files", [])}
    if m.get("gold") and not out["gold_files"]:
        out["gold_files"] = {Path(str(m["gold"])).name: trim(m)}
    return out


def score_run(pred_files: Path | Sequence[Path], gold_files: Path | Sequence[Path], out_dir: Path, *,
              embed: EmbedFn | None = None, threshold: float = SEMANTIC_THRESHOLD, ceiling: Path | None = None,
              meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Score saved predictions (a model run, a teacher re-tag) against gold file(s); writes
    ``out_dir/metrics.json`` and ``out_dir/report.md``. ``embed`` None: the default MiniLM embedder."""
    from instag.distill.report import render_report
    from instag.select.normalize import sentence_transformer_embedder

    ceiling_m = load_ceiling(ceiling) if ceiling is not None else None  # a bad file fails before the scoring
    metrics = evaluate_predictions(pred_files, gold_files, embed or sentence_transformer_embedder(), threshold)
    meta = dict(meta or {})
    if "model" not in meta:  # a saved run: name it by the model its records were tagged with
        models = load_pairs(pred_files, gold_files)["model"].dropna()
        meta["model"] = ", ".join(models.value_counts().index) or "predictions"
        meta["predictions"] = ", ".join(map(str, _as_list(pred_files)))
    metrics.update(meta)
    metrics.setdefault("gold", ", ".join(map(str, _as_list(gold_files))))
    metrics.setdefault("date", time.strftime("%Y-%m-%d"))
    if ceiling_m:
        metrics["ceiling"] = ceiling_m
    out_dir.mkdir(parents=True, exist_ok=True)
    _calibration_plots(metrics, gold_files, out_dir)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (out_dir / "report.md").write_text(render_report(metrics))
    return metrics


def run_eval(model: str, gold_file: Path | Sequence[Path], out_dir: Path, *, batch_size: int = 8,
             max_new_tokens: int = 256, threshold: float = SEMANTIC_THRESHOLD, embed: EmbedFn | None = None,
             progress: bool = True, ceiling: Path | None = None, **tag_kw: Any) -> dict[str, Any]:
    """Tag the gold queries with ``model`` (resumable, every gold file into ``out_dir/predictions.jsonl``)
    and score them with :func:`score_run`."""
    from instag.tagger.run import TagOptions, tag_file

    if ceiling is not None:
        load_ceiling(ceiling)  # fail before tagging, not after
    out_dir.mkdir(parents=True, exist_ok=True)
    preds = out_dir / "predictions.jsonl"
    t0 = time.time()
    opts = TagOptions(model=model, batch_size=batch_size, max_new_tokens=max_new_tokens, progress=progress, **tag_kw)
    summaries = [tag_file(g, preds, opts) for g in _as_list(gold_file)]
    tag_s = sum(x.seconds for x in summaries)
    tagged = sum(x.tagged for x in summaries)
    meta = {"model": model, "tag_seconds": round(tag_s, 2), "queries_per_s": tagged / tag_s if tag_s else 0.0}
    metrics = score_run(preds, gold_file, out_dir, embed=embed, threshold=threshold, ceiling=ceiling, meta=meta)
    metrics["seconds"] = round(time.time() - t0, 2)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics

"""How far a tagger's per-tag confidences can be trusted, judged against teacher (gold) tags.

A predicted tag is correct when it matches a gold tag of its query at the ``semantic`` level of
:mod:`instag.distill.evaluate` (the same :func:`~instag.distill.matching.semantic_pairs`). Over the
predicted tags of an eval this gives:

- a reliability table: equal-width confidence bins, each with its count, mean confidence and precision
  (share of its tags that are correct), and the expected calibration error (ECE: count-weighted mean of
  |precision - mean confidence|);
- a precision/recall curve: for "keep the tags with confidence >= t", the semantic level re-scored on the
  kept tags (recall over all gold tags), and the share of predicted tags kept;
- plots of both, and a post-hoc isotonic calibrator (confidence -> probability of being correct).

Tags without a confidence (teacher tags, older files) are unknown: counted and left out of the bins, and
always kept by a threshold, as ``instag normalize`` keeps them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from instag.distill.matching import SEMANTIC_THRESHOLD, dedupe, semantic_pairs, tag_vectors
from instag.select.normalize import EmbedFn, confidence_by_tag

N_BINS = 10
PR_THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(20))  # 0.0, 0.05, ..., 0.95
REPORT_THRESHOLDS = (0.0, 0.3, 0.5, 0.7, 0.9)

ConfLists = Sequence[Sequence[float | None]]


def _conf_array(values: Sequence[float | None]) -> np.ndarray:
    """Floats clipped to [0, 1], NaN for unknown."""
    a = np.array([np.nan if v is None else float(v) for v in values], dtype=float)
    return np.clip(a, 0.0, 1.0)


def tag_confidence(tags: Sequence[str], confs: Sequence[float | None] | None) -> dict[str, float | None]:
    """Stripped tag -> its confidence in one query (the rule of ``instag normalize``: a tag listed twice
    takes its highest known confidence)."""
    by_tag = confidence_by_tag([t.strip() for t in tags], confs)
    by_tag.pop("", None)
    return by_tag


@dataclass
class TagOutcomes:
    """One entry per distinct predicted tag of each query (what the semantic level counts as n_pred)."""

    query: np.ndarray  # index of the query in the input lists
    tag: list[str]
    confidence: np.ndarray  # NaN: unknown
    correct: np.ndarray  # bool
    n_gold: int  # distinct gold tags over all queries (the recall denominator)
    n_pred: int = field(init=False)

    def __post_init__(self) -> None:
        self.n_pred = len(self.tag)

    @property
    def known(self) -> np.ndarray:
        return ~np.isnan(self.confidence)


def tag_outcomes(preds: Sequence[Sequence[str]], confs: ConfLists | None, golds: Sequence[Sequence[str]],
                 embed: EmbedFn | None = None, threshold: float = SEMANTIC_THRESHOLD,
                 vec: dict[str, np.ndarray] | None = None) -> TagOutcomes:
    """Whether each predicted tag is correct at the semantic level, with its confidence. ``confs`` is
    aligned with ``preds`` (None: all unknown); give ``embed`` or the tag vectors ``vec``."""
    if vec is None:
        if embed is None:
            raise ValueError("tag_outcomes needs an embedder (or tag vectors) for the semantic level")
        vec = tag_vectors(list(preds) + list(golds), embed)
    confs = confs if confs is not None else [None] * len(preds)
    q, tags, cs, ok = [], [], [], []
    n_gold = 0
    for i, (pred, c, gold) in enumerate(zip(preds, confs, golds)):
        n_gold += len(dedupe(gold, str.strip))
        by_tag = tag_confidence(pred, c)
        matched = {p for p, _ in semantic_pairs(pred, gold, vec, threshold)}
        for t, conf in by_tag.items():
            q.append(i)
            tags.append(t)
            cs.append(conf)
            ok.append(t in matched)
    return TagOutcomes(query=np.array(q, dtype=int), tag=tags, confidence=_conf_array(cs),
                       correct=np.array(ok, dtype=bool), n_gold=n_gold)


# ---------------------------------------------------------------- reliability


def _bin_index(conf: np.ndarray, n_bins: int) -> np.ndarray:
    # the epsilon keeps edges such as 0.3 in the bin they open despite float rounding
    return np.minimum(np.floor(conf * n_bins + 1e-9).astype(int), n_bins - 1)


def reliability_table(confidence: Sequence[float] | np.ndarray, correct: Sequence[bool] | np.ndarray,
                      n_bins: int = N_BINS) -> dict[str, Any]:
    """Equal-width bins over [0, 1] (the last one closed): count, mean confidence and precision of each
    (None when empty), and the ECE over the tags with a confidence (None when there are none)."""
    conf = _conf_array(list(confidence))
    ok = np.asarray(correct, dtype=bool)
    known = ~np.isnan(conf)
    conf, ok = conf[known], ok[known]
    idx = _bin_index(conf, n_bins)
    bins, ece = [], 0.0
    for b in range(n_bins):
        sel = idx == b
        n = int(sel.sum())
        mean_c = float(conf[sel].mean()) if n else None
        prec = float(ok[sel].mean()) if n else None
        if n:
            ece += n * abs(prec - mean_c)
        bins.append({"lo": round(b / n_bins, 6), "hi": round((b + 1) / n_bins, 6), "count": n,
                     "mean_confidence": mean_c, "precision": prec})
    n = int(known.sum())
    return {"n_bins": n_bins, "bins": bins, "ece": ece / n if n else None,
            "n_with_confidence": n, "n_without_confidence": int((~known).sum())}


def expected_calibration_error(confidence: Sequence[float] | np.ndarray, correct: Sequence[bool] | np.ndarray,
                               n_bins: int = N_BINS) -> float | None:
    """Count-weighted mean |precision - mean confidence| over equal-width bins; None without confidences."""
    return reliability_table(confidence, correct, n_bins)["ece"]


# ---------------------------------------------------------------- precision / recall


def rank_correlation(pred_counts: Sequence[int], gold_counts: Sequence[int]) -> float | None:
    """Spearman correlation of the model's and the teacher's tag counts per query (InsTag's complexity),
    rounded; None where there are fewer than two queries or either side's counts do not vary."""
    if len(pred_counts) < 2:
        return None
    rho = pd.Series(pred_counts, dtype=float).corr(pd.Series(gold_counts, dtype=float), method="spearman")
    return None if pd.isna(rho) else round(float(rho), 4)


def pr_curve(preds: Sequence[Sequence[str]], confs: ConfLists | None, golds: Sequence[Sequence[str]],
             vec: dict[str, np.ndarray], threshold: float = SEMANTIC_THRESHOLD,
             thresholds: Sequence[float] = PR_THRESHOLDS, keep_one: bool = False) -> list[dict[str, float]]:
    """The semantic level re-scored on the predicted tags kept by "confidence >= t" (unknown kept), for
    each t: micro precision, recall (over all gold tags), F1, counts, the share of predicted tags kept and
    the rank correlation of the kept tag counts with the teacher's (:func:`rank_correlation`).
    Matching again, rather than reusing each tag's verdict, lets a kept tag take a gold tag that a dropped
    near-duplicate held. ``keep_one``: a query keeps its most confident tag, as `instag tag
    --min-tag-confidence` does (instag.tagger.confidence.keep_mask); otherwise the rule of normalize."""
    from instag.tagger.confidence import keep_mask

    confs = confs if confs is not None else [None] * len(preds)
    per_query = [(tag_confidence(p, c), g) for p, c, g in zip(preds, confs, golds)]
    n_gold = sum(len(dedupe(g, str.strip)) for g in golds)
    n_all = sum(len(by_tag) for by_tag, _ in per_query)
    rows = []
    for t in thresholds:
        tp = n_pred = 0
        counts = []
        for by_tag, gold in per_query:
            if keep_one:
                kept = [p for p, k in zip(by_tag, keep_mask(list(by_tag.values()), t)) if k]
            else:
                kept = [p for p, c in by_tag.items() if c is None or c >= t]
            counts.append(len(kept))
            n_pred += len(kept)
            tp += len(semantic_pairs(kept, gold, vec, threshold))
        p = tp / n_pred if n_pred else 0.0
        r = tp / n_gold if n_gold else 0.0
        rows.append({"threshold": float(t), "precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0,
                     "tp": tp, "n_pred": n_pred, "n_gold": n_gold, "kept_share": n_pred / n_all if n_all else 0.0,
                     "complexity_spearman": rank_correlation(counts, [len(g) for g in golds])})
    return rows


def any_confidence(confs: ConfLists | None) -> bool:
    return any(c is not None for cs in (confs or []) for c in (cs or []))


def calibration_metrics(preds: Sequence[Sequence[str]], confs: ConfLists | None, golds: Sequence[Sequence[str]],
                        embed: EmbedFn | None, threshold: float = SEMANTIC_THRESHOLD, n_bins: int = N_BINS,
                        thresholds: Sequence[float] = PR_THRESHOLDS) -> dict[str, Any] | None:
    """The ``calibration`` entry of a metrics section: reliability bins, ECE and the PR curve, at the
    semantic level. None when no predicted tag has a confidence or there is no embedder."""
    if embed is None or not any_confidence(confs):
        return None
    vec = tag_vectors(list(preds) + list(golds), embed)
    out = tag_outcomes(preds, confs, golds, threshold=threshold, vec=vec)
    return {"level": "semantic", "semantic_threshold": threshold, "n_tags": out.n_pred,
            **reliability_table(out.confidence, out.correct, n_bins),
            "pr_curve": pr_curve(preds, confs, golds, vec, threshold, thresholds)}


# ---------------------------------------------------------------- plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_reliability(cal: dict[str, Any], path: Path, title: str = "") -> Path:
    """Precision against mean confidence per bin (bars at the bin centres, counts above), the diagonal."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    width = 1.0 / cal["n_bins"]
    ax.plot([0, 1], [0, 1], "--", color="gray", lw=1, label="perfect calibration")
    full = [b for b in cal["bins"] if b["count"]]
    ax.bar([(b["lo"] + b["hi"]) / 2 for b in full], [b["precision"] for b in full], width=width * 0.9,
           alpha=0.35, color="C0", label="precision per bin")
    ax.plot([b["mean_confidence"] for b in full], [b["precision"] for b in full], "o-", color="C0",
            label="(mean confidence, precision)")
    for b in full:
        ax.annotate(str(b["count"]), ((b["lo"] + b["hi"]) / 2, b["precision"]), ha="center", fontsize=7,
                    xytext=(0, 3), textcoords="offset points")
    ece = cal.get("ece")
    ax.set(xlim=(0, 1), ylim=(0, 1.08), xlabel="confidence", ylabel="precision (semantic level)",
           title=(f"{title}: " if title else "") + "reliability" + (f", ECE {ece:.3f}" if ece is not None else ""))
    ax.legend(fontsize=7, loc="best")
    return _save(fig, path)


def plot_precision_recall(cal: dict[str, Any], path: Path, title: str = "") -> Path:
    """Precision, recall, F1 and the share of tags kept against the confidence threshold."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    rows = cal["pr_curve"]
    ts = [r["threshold"] for r in rows]
    for key, style in (("precision", "o-"), ("recall", "s-"), ("f1", "^-"), ("kept_share", ":")):
        ax.plot(ts, [r[key] for r in rows], style, ms=3, label=key.replace("_", " "))
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="keep tags with confidence >= threshold",
           ylabel="semantic level", title=(f"{title}: " if title else "") + "precision / recall by confidence")
    ax.legend(fontsize=7)
    return _save(fig, path)


def _save(fig, path: Path) -> Path:  # noqa: ANN001
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def write_plots(cal: dict[str, Any], out_dir: Path, stem: str) -> dict[str, str]:
    """Write both plots as ``reliability_<stem>.png`` and ``precision_recall_<stem>.png``; their file
    names (relative to ``out_dir``)."""
    names = {"reliability": f"reliability_{stem}.png", "precision_recall": f"precision_recall_{stem}.png"}
    plot_reliability(cal, Path(out_dir) / names["reliability"], stem)
    plot_precision_recall(cal, Path(out_dir) / names["precision_recall"], stem)
    return names


# ---------------------------------------------------------------- post-hoc calibration


@dataclass
class IsotonicCalibrator:
    """A monotone map confidence -> probability of being correct, piecewise linear through (x, y)."""

    x: list[float]
    y: list[float]
    method = "isotonic"

    @classmethod
    def fit(cls, confidence: Sequence[float | None] | np.ndarray, correct: Sequence[bool] | np.ndarray
            ) -> IsotonicCalibrator:
        """Fit on (confidence, correct) pairs; pairs without a confidence are left out."""
        from sklearn.isotonic import IsotonicRegression

        conf = _conf_array(list(confidence))
        ok = np.asarray(correct, dtype=float)
        known = ~np.isnan(conf)
        if not known.any():
            raise ValueError("no (confidence, correct) pair to fit a calibrator on")
        ir = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(conf[known], ok[known])
        # The fit is a staircase: flat blocks joined by near-vertical steps, where a raw difference of 0.001
        # (two engines' float arithmetic) can move the calibrated value by 0.1. One point at the middle of
        # each block, joined by straight lines, keeps it monotone and its slopes moderate.
        xs, ys = [], []
        for x, y in zip(ir.X_thresholds_, ir.y_thresholds_):
            if ys and y == ys[-1][1]:
                xs[-1].append(float(x))
            else:
                xs.append([float(x)])
                ys.append((len(xs) - 1, float(y)))
        return cls(x=[(b[0] + b[-1]) / 2 for b in xs], y=[y for _, y in ys])

    def apply(self, conf: float | None) -> float | None:
        """The calibrated confidence (clipped at the ends of the fitted range); None stays None."""
        return None if conf is None else float(np.interp(conf, self.x, self.y))

    def apply_array(self, conf: Sequence[float | None] | np.ndarray) -> np.ndarray:
        c = _conf_array(list(conf))
        out = np.interp(np.nan_to_num(c), self.x, self.y)
        return np.where(np.isnan(c), np.nan, out)

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method, "x": self.x, "y": self.y}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> IsotonicCalibrator:
        from instag.tagger.confidence import isotonic_points

        x, y = isotonic_points(data)
        return cls(x=x, y=y)

    def save(self, path: Path) -> Path:
        Path(path).write_text(json.dumps(self.to_json()), encoding="utf-8")
        return Path(path)

    @classmethod
    def load(cls, path: Path) -> IsotonicCalibrator:
        return cls.from_json(json.loads(Path(path).read_text(encoding="utf-8")))


def calibration_gain(calibrator: IsotonicCalibrator, confidence: Sequence[float | None] | np.ndarray,
                     correct: Sequence[bool] | np.ndarray, n_bins: int = N_BINS) -> dict[str, Any]:
    """ECE of a set of pairs (other than those the calibrator was fitted on) before and after calibrating."""
    conf = _conf_array(list(confidence))
    return {"n": int((~np.isnan(conf)).sum()), "ece_before": expected_calibration_error(conf, correct, n_bins),
            "ece_after": expected_calibration_error(calibrator.apply_array(conf), correct, n_bins)}

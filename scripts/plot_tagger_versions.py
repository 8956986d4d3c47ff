"""Semantic F1 of each shipped tagger version on every held-out set, as a plot.

    python scripts/plot_tagger_versions.py [benchmarks/results/tagger_versions.json]

The JSON holds the figures `instag eval --engine vllm` measured for each version (docs/benchmarks.md, *The
shipped tagger*, tells how each was trained), the kNN baseline over the current train tags, the teacher's
blind re-tag and issue 26's targets; the plot goes beside it as tagger_versions.png.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def main(path: Path) -> Path:
    data = json.loads(path.read_text())
    sets = data["sets"]
    versions = data["versions"]
    fig, axes = plt.subplots(1, len(sets), figsize=(4 * len(sets), 3.6), sharey=True)
    for ax, name in zip(axes, sets):
        for key, style, label in (("f1", "o-", "every tag"), ("f1_threshold", "s--", "threshold 0.2")):
            pts = [(i, v[key][name]) for i, v in enumerate(versions) if v.get(key, {}).get(name) is not None]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=label)
        for key, style, label in (("knn", ":", "kNN vote (current train)"), ("target", "--", "target"),
                                  ("ceiling", "-.", "teacher re-tag")):
            if data.get(key, {}).get(name) is not None:
                ax.axhline(data[key][name], ls=style, lw=1, color="gray" if key != "target" else "red", label=label)
        ax.set_xticks(range(len(versions)), [v["name"] for v in versions])
        ax.set_title(name)
        ax.set_ylim(0, 0.8)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("semantic F1 against the teacher")
    handles, labels = axes[0].get_legend_handles_labels()  # the first set has every line
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8)
    fig.suptitle("instag's local tagger (SmolLM2-135M + LoRA), by shipped version")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    out = path.with_suffix(".png")
    fig.savefig(out, dpi=110)
    print(out)
    return out


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "benchmarks/results/tagger_versions.json")

"""`instag run`: tag -> normalize -> analyze -> select into one folder, each step skipped when it is done.

Tagging always resumes (it loads no model when every query is already tagged). The other steps are
skipped when all their outputs exist, are newer than their input and were made with the same
parameters (recorded in ``OUT_DIR/pipeline.json``), so a second run only redoes what changed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from instag.select.analyze import DatasetStats, analyze_files
from instag.select.normalize import EmbedFn, NormalizeParams
from instag.select.pipeline import NormalizeResult, SelectResult, normalize_file, select_file
from instag.tagger.run import TagOptions, TagSummary, tag_file

STATE_FILE = "pipeline.json"


@dataclass
class RunPaths:
    """Where each step writes, inside the output folder."""

    out_dir: Path

    @property
    def tags(self) -> Path:
        return self.out_dir / "tags.jsonl"

    @property
    def normalized(self) -> Path:
        return self.out_dir / "normalized.jsonl"

    @property
    def tag_map(self) -> Path:
        return self.out_dir / "tag_map.json"

    @property
    def report(self) -> Path:
        return self.out_dir / "report"

    @property
    def selected(self) -> Path:
        return self.out_dir / "selected.jsonl"


@dataclass
class StepOutcome:
    step: str
    outputs: list[Path]
    ran: bool
    seconds: float = 0.0
    note: str = ""


@dataclass
class RunResult:
    paths: RunPaths
    steps: list[StepOutcome] = field(default_factory=list)
    tag: TagSummary | None = None
    normalize: NormalizeResult | None = None
    analyze: list[DatasetStats] | None = None
    select: SelectResult | None = None

    @property
    def interrupted(self) -> bool:
        return bool(self.tag and self.tag.interrupted)


def up_to_date(outputs: list[Path], inputs: list[Path]) -> bool:
    """Every output exists and is at least as new as every input (make's rule)."""
    if not all(p.exists() for p in outputs):
        return False
    return min(p.stat().st_mtime for p in outputs) >= max(p.stat().st_mtime for p in inputs)


def run_pipeline(input_path: Path, out_dir: Path, tag_opts: TagOptions, n: int = 6000,
                 strategy: str = "complexity", seed: int = 0, params: NormalizeParams | None = None,
                 embed: EmbedFn | None = None, on_step: Callable[[str], None] | None = None,
                 on_done: Callable[[StepOutcome, RunResult], None] | None = None) -> RunResult:
    """Run the four steps into ``out_dir``; stops after tagging when it was interrupted.

    ``on_step(name)`` is called before a step runs, ``on_done(outcome, result)`` after each step (run or
    skipped): the command line prints progress and the steps' tables with them."""
    input_path, out_dir = Path(input_path), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = RunPaths(out_dir)
    params = params or NormalizeParams()
    state_path = out_dir / STATE_FILE
    try:
        state: dict[str, Any] = json.loads(state_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        state = {}
    res = RunResult(paths)

    def finish(outcome: StepOutcome) -> None:
        res.steps.append(outcome)
        if on_done:
            on_done(outcome, res)

    def step(name: str, inputs: list[Path], outputs: list[Path], stamp: dict[str, Any],
             work: Callable[[], str]) -> None:
        stamp = json.loads(json.dumps(stamp))  # as it reads back from pipeline.json (tuples as lists)
        if up_to_date(outputs, inputs) and state.get(name) == stamp:
            finish(StepOutcome(name, outputs, ran=False, note="up to date"))
            return
        if on_step:
            on_step(name)
        t0 = time.time()
        note = work()
        state[name] = stamp
        state_path.write_text(json.dumps(state, indent=1), encoding="utf-8")
        finish(StepOutcome(name, outputs, ran=True, seconds=time.time() - t0, note=note))

    # 1. tag: resumable by itself, so it always runs and tags only what is missing
    if on_step:
        on_step("tag")
    t0 = time.time()
    res.tag = tag_file(input_path, paths.tags, tag_opts)
    s = res.tag
    finish(StepOutcome("tag", [paths.tags], ran=s.tagged > 0, seconds=time.time() - t0,
                       note=f"{s.tagged} tagged now, {s.already_done} already done"
                            + (f", {s.errors} failed" if s.errors else "")))
    if s.interrupted:
        return res

    def normalize() -> str:
        res.normalize = normalize_file(paths.tags, paths.normalized, paths.tag_map, params, embed=embed,
                                       progress=on_step and (lambda sub: on_step(f"normalize: {sub}")))
        r = res.normalize
        return f"{r.queries} queries, {r.tags_before} unique tags -> {r.tags_after}"

    def analyze() -> str:
        res.analyze, _ = analyze_files([paths.normalized], paths.report)
        return f"{len(res.analyze)} data set(s)"

    def select() -> str:
        res.select = select_file(paths.normalized, paths.selected, n, strategy, seed)
        r = res.select
        return f"{r.selected.queries} queries, tag coverage {100 * r.coverage:.1f}%"

    step("normalize", [paths.tags], [paths.normalized, paths.tag_map], {"params": asdict(params)}, normalize)
    step("analyze", [paths.normalized], [paths.report / "index.html", paths.report / "summary.json"], {}, analyze)
    step("select", [paths.normalized], [paths.selected], {"n": n, "strategy": strategy, "seed": seed}, select)
    return res

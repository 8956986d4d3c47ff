"""`instag run`: the whole flow on the sample file with the embedded model, then a second run that skips
what is up to date and redoes what its input or parameters changed."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from instag.cli import app
from instag.pipeline import run_pipeline
from instag.tagger.run import TagOptions
from tests.conftest import REPO, instag_env, read_jsonl, write_jsonl

runner = CliRunner()
OUTPUTS = ("tags.jsonl", "normalized.jsonl", "tag_map.json", "report/index.html", "report/summary.json",
           "selected.jsonl")


def _mtimes(out):
    return {name: (out / name).stat().st_mtime_ns for name in OUTPUTS}


def _run(out, *extra):
    res = runner.invoke(app, ["run", str(REPO / "examples" / "sample.jsonl"), "-o", str(out), "-n", "3",
                              "--model", "local", "--engine", "transformers", "--max-new-tokens", "48", "-q", *extra])
    assert res.exit_code == 0, res.output
    return res.output


@pytest.mark.slow
def test_run_tags_normalizes_analyzes_and_selects_then_skips_what_is_up_to_date(tmp_path):
    out = tmp_path / "run"
    _run(out)
    tags = read_jsonl(out / "tags.jsonl")
    assert len(tags) == 5 and all(r["status"] == "ok" for r in tags)
    normalized = read_jsonl(out / "normalized.jsonl")
    assert len(normalized) == 5 and all("normalized_tags" in r for r in normalized)
    assert set(json.loads((out / "tag_map.json").read_text())["map"]) == {t["tag"] for r in tags for t in r["tags"]}
    assert json.loads((out / "report" / "summary.json").read_text())
    selected = read_jsonl(out / "selected.jsonl")
    assert len(selected) == 3 and [r["selection"]["rank"] for r in selected] == [0, 1, 2]

    before = _mtimes(out)
    again = run_pipeline(REPO / "examples" / "sample.jsonl", out, TagOptions(model="local", engine="transformers",
                                                                             progress=False), n=3)
    assert [(s.step, s.ran) for s in again.steps] == [("tag", False), ("normalize", False), ("analyze", False),
                                                      ("select", False)]
    assert again.tag.already_done == 5 and again.tag.model == ""  # no model was loaded
    assert _mtimes(out) == before  # nothing rewritten

    # a newer normalized file redoes what reads it; new parameters redo their step
    os.utime(out / "normalized.jsonl", ns=(before["selected.jsonl"] + 10**9,) * 2)
    _run(out, "--seed", "1")
    after = _mtimes(out)
    assert after["tags.jsonl"] == before["tags.jsonl"] and after["tag_map.json"] == before["tag_map.json"]
    assert after["report/index.html"] > before["report/index.html"]
    assert after["selected.jsonl"] > before["selected.jsonl"]
    assert {r["selection"]["seed"] for r in read_jsonl(out / "selected.jsonl")} == {1}


def test_run_stopped_by_sigterm_exits_143_and_resumes(tiny_model_dir, tmp_path):
    """`instag run` stops on SIGTERM as `instag tag` does: tags kept, exit 128 + 15; a re-run finishes,
    through analyze and select, though no answer of the tiny model parses."""
    rows = [{"id": f"q{i}", "query": f"Explain topic number {i} in detail."} for i in range(200)]
    inp = write_jsonl(tmp_path / "many.jsonl", rows)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "instag.cli", "run", str(inp), "-o", str(out), "-n", "5", "--model",
           str(tiny_model_dir), "--engine", "transformers", "--batch-size", "1", "--max-new-tokens", "4", "-q"]
    tags = out / "tags.jsonl"

    def done() -> int:
        return sum(1 for x in tags.read_text().splitlines() if x.endswith("}")) if tags.exists() else 0

    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
                            cwd=REPO, env=instag_env())
    deadline = time.time() + 120
    while time.time() < deadline and done() < 10:
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "interrupted" in stderr.decode(), stderr
    assert 10 <= done() < 200
    finished = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO, env=instag_env(), check=False)
    assert finished.returncode == 0, finished.stderr
    assert sorted(r["id"] for r in read_jsonl(tags)) == sorted(r["id"] for r in rows)
    # The random tiny model's answers do not parse, so nothing is selected: the later steps still run.
    assert (out / "selected.jsonl").exists() and (out / "report" / "index.html").exists()

"""The local (transformers) tagging path on a tiny random LLaMA and on the embedded SmolLM2."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from instag.cli import app
from instag.tagger.run import TagOptions, tag_file
from tests.conftest import REPO, instag_env, read_jsonl, write_jsonl

runner = CliRunner()
SCHEMA = {"id", "source", "query", "tags", "raw", "model", "status", "error", "prompt_tokens",
          "completion_tokens", "truncated"}


def test_cli_tags_every_query_with_the_full_schema(tiny_model_dir, alpaca_file, tmp_path):
    out = tmp_path / "tags.jsonl"
    res = runner.invoke(app, ["tag", str(alpaca_file), "-o", str(out), "--model", str(tiny_model_dir),
                              "--batch-size", "4", "--max-new-tokens", "8", "-q"])
    assert res.exit_code == 0, res.output
    recs = read_jsonl(out)
    assert len(recs) == 12 and len({r["id"] for r in recs}) == 12
    for r in recs:
        assert set(r) == SCHEMA
        assert r["raw"].startswith('[{"tag": "')  # prefilled answer, raw text always kept
        assert r["status"] in ("ok", "unparsed")
        assert 0 < r["completion_tokens"] <= 8 and r["prompt_tokens"] > 20
        assert r["source"] == "poems" and r["model"] == tiny_model_dir.name


def test_batched_and_single_generation_agree(tiny_model_dir, alpaca_file, tmp_path):
    """Left padding must not change greedy answers."""
    outs = {}
    for bs in (1, 5):
        out = tmp_path / f"bs{bs}.jsonl"
        tag_file(alpaca_file, out, TagOptions(model=str(tiny_model_dir), batch_size=bs, max_new_tokens=6,
                                              progress=False))
        outs[bs] = {r["id"]: r["raw"] for r in read_jsonl(out)}
    assert outs[1] == outs[5]


def test_template_cache_gives_the_answers_of_whole_prompts(tiny_model_dir, alpaca_file):
    """The transformers engine computes the prompt template's KV cache once and starts every batch from a
    copy (template, padding, query); its answers are those of the whole left-padded prompts."""
    from instag.io import read_queries
    from instag.tagger.backends.hf import HFBackend
    from instag.tagger.models import resolve

    backend = HFBackend(resolve(str(tiny_model_dir)), max_new_tokens=8)
    queries = [q.query for q in read_queries(alpaca_file)] + ["  two leading spaces", "?", "x " * 40]
    prefix, cache = backend.template()
    assert len(prefix) > 50 and cache.get_seq_length() == len(prefix)  # system prompt and instructions
    assert "past_key_values" in backend._inputs(queries)
    cached = [backend.generate(queries[i:i + 5]) for i in range(0, len(queries), 5)]
    assert cache.get_seq_length() == len(prefix)  # batches used copies; the template's cache is intact
    backend.prefix_cache = False
    assert "past_key_values" not in backend._inputs(queries)
    whole = [backend.generate(queries[i:i + 5]) for i in range(0, len(queries), 5)]
    def answers(batches):  # the answers exactly; their tokens' log-probabilities to float tolerance below
        return [[(g.text, g.prompt_tokens, g.completion_tokens, g.token_ends) for g in b] for b in batches]

    assert answers(cached) == answers(whole) and all(g.completion_tokens > 0 for batch in whole for g in batch)
    assert all(abs(x - y) < 1e-3 for bc, bw in zip(cached, whole) for gc, gw in zip(bc, bw)
               for x, y in zip(gc.token_logprobs, gw.token_logprobs))

    # prompts that do not start with the template's tokens take the whole-prompt path
    backend.prefix_cache = True
    backend._prefix = (prefix[:-1] + [prefix[-1] + 1], cache)
    assert "past_key_values" not in backend._inputs(queries)


def test_resume_skips_done_ids_and_duplicates_nothing(tiny_model_dir, alpaca_file, tmp_path):
    out = tmp_path / "tags.jsonl"
    opts = TagOptions(model=str(tiny_model_dir), batch_size=4, max_new_tokens=4, progress=False)
    first = tag_file(alpaca_file, out, TagOptions(**{**opts.__dict__, "limit": 5}))
    assert first.tagged == 5
    second = tag_file(alpaca_file, out, opts)
    assert second.already_done == 5 and second.tagged == 7
    third = tag_file(alpaca_file, out, opts)
    assert third.tagged == 0 and third.already_done == 12
    ids = [r["id"] for r in read_jsonl(out)]
    assert len(ids) == len(set(ids)) == 12


def test_stopped_and_killed_runs_lose_nothing_and_resume(tiny_model_dir, tmp_path):
    """SIGTERM (as a service manager stops it) ends a run as Ctrl-C does, exit 143; SIGKILL cannot be
    handled. Either way what was written is kept, and re-running tags the rest."""
    rows = [{"id": f"q{i}", "query": f"Explain topic number {i} in detail."} for i in range(400)]
    inp = write_jsonl(tmp_path / "many.jsonl", rows)
    out = tmp_path / "tags.jsonl"
    cmd = [sys.executable, "-m", "instag.cli", "tag", str(inp), "-o", str(out), "--model", str(tiny_model_dir),
           "--engine", "transformers", "--batch-size", "1", "--max-new-tokens", "4", "-q"]  # auto: vLLM for 400

    def lines() -> list[dict]:
        return [json.loads(x) for x in out.read_text().splitlines() if x.endswith("}")] if out.exists() else []

    for sig in (signal.SIGTERM, signal.SIGKILL):
        start = len(lines())
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
                                cwd=REPO, env=instag_env())
        deadline = time.time() + 120
        while time.time() < deadline and len(lines()) < start + 20:
            time.sleep(0.2)
        os.kill(proc.pid, sig)
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == (143 if sig == signal.SIGTERM else -sig), stderr
        assert start + 20 <= len(lines()) < 400, "the run should have been stopped midway"
    before = lines()
    # The resumed run may batch (batch size changes no record already written): the rest in seconds.
    resume = cmd[:cmd.index("--batch-size") + 1] + ["32"] + cmd[cmd.index("--batch-size") + 2:]
    done = subprocess.run(resume, capture_output=True, text=True, timeout=300, cwd=REPO, env=instag_env())
    assert done.returncode == 0, done.stderr
    after = read_jsonl(out)
    ids = [r["id"] for r in after]
    assert sorted(ids) == sorted(r["id"] for r in rows)  # every query once, none twice
    assert {r["id"]: r["raw"] for r in after if r["id"] in {b["id"] for b in before}} == \
        {b["id"]: b["raw"] for b in before}  # nothing done before was redone


def test_long_queries_are_truncated_and_counted(tiny_model_dir, tmp_path):
    inp = write_jsonl(tmp_path / "long.jsonl", [{"query": "word " * 300}, {"query": "short one"}])
    out = tmp_path / "t.jsonl"
    s = tag_file(inp, out, TagOptions(model=str(tiny_model_dir), max_query_tokens=50, max_new_tokens=2,
                                      progress=False))
    assert s.truncated == 1
    recs = {r["query"]: r for r in read_jsonl(out)}
    assert recs["short one"]["truncated"] is False
    long = recs["word " * 300]  # the record keeps the full query text
    assert long["truncated"] is True
    # the model saw at most the 50-token budget of the query, on top of the same prompt as a short query
    assert long["prompt_tokens"] - recs["short one"]["prompt_tokens"] <= 50


def test_truncation_goes_a_chunk_at_a_time_as_tagging_goes(tiny_model_dir, tmp_path, monkeypatch):
    """Queries are cut one chunk at a time (a batched tokenizer call each), while earlier chunks are tagged."""
    from instag.tagger import run
    from instag.tagger.backends.hf import HFBackend
    from instag.tagger.models import resolve

    monkeypatch.setattr(run, "TRUNCATE_CHUNK", 4)
    rows = [{"id": str(i), "query": "word " * 300 if i % 2 == 0 else f"short query {i}"} for i in range(40)]
    backend = HFBackend(resolve(str(tiny_model_dir)), max_new_tokens=2)
    calls = []

    def spy(name):
        method = getattr(backend, name)

        def call(*args):
            calls.append(name)
            return method(*args)

        monkeypatch.setattr(backend, name, call)

    spy("truncate")
    spy("generate")
    # batch 1: the runner takes 16 queries at a time, so 4 chunks of 4 are cut before the first answer
    s = tag_file(write_jsonl(tmp_path / "in.jsonl", rows), tmp_path / "t.jsonl",
                 TagOptions(max_query_tokens=50, batch_size=1, progress=False), backend=backend)
    assert s.tagged == 40 and s.truncated == 20
    recs = {r["id"]: r for r in read_jsonl(tmp_path / "t.jsonl")}
    assert {k: r["truncated"] for k, r in recs.items()} == {str(i): i % 2 == 0 for i in range(40)}
    assert calls.count("truncate") == 10 and calls[:5] == ["truncate"] * 4 + ["generate"]


def test_bad_input_exit_codes(tiny_model_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "fine"}\n{"query": "broken"\n')
    out = tmp_path / "o.jsonl"
    res = runner.invoke(app, ["tag", str(bad), "-o", str(out), "--model", str(tiny_model_dir), "-q"])
    assert res.exit_code == 2
    assert f"{bad}:2: malformed JSON (Expecting ',' delimiter at column 19)" in res.output
    assert not out.exists()  # nothing is tagged before the whole input is validated
    res = runner.invoke(app, ["tag", str(bad), "-o", str(out), "--model", str(tiny_model_dir), "-q",
                              "--skip-bad", "--max-new-tokens", "2"])
    assert res.exit_code == 0, res.output
    assert len(read_jsonl(out)) == 1
    res = runner.invoke(app, ["tag", str(bad), "-o", str(tmp_path / "o2.jsonl"), "--skip-bad", "-q",
                              "--model", str(tmp_path / "no-such-model")])
    assert res.exit_code == 2 and "is not a checkpoint directory" in res.output


@pytest.mark.slow
def test_local_is_the_shipped_distilled_adapter_and_tags_the_sample_file(tmp_path):
    """README's first command: `--model local` is the registered default adapter on the embedded model."""
    from instag.tagger.confidence import load_calibration
    from instag.tagger.models import default_adapter, resolve
    from tests.conftest import REPO

    name, path = default_adapter()
    assert path == REPO / "models" / name
    resolved = resolve("local")
    assert (resolved.name, resolved.target, resolved.adapter) == (name, "tags", str(path))
    out = tmp_path / "sample_tags.jsonl"
    res = runner.invoke(app, ["tag", str(REPO / "examples" / "sample.jsonl"), "-o", str(out), "--model", "local",
                              "--engine", "transformers", "-q"])
    assert res.exit_code == 0, res.output
    recs = read_jsonl(out)
    assert len(recs) == 5 and all(r["model"] == name for r in recs)
    assert all(r["status"] == "ok" and 2 <= len(r["tags"]) + len(r.get("low_confidence_tags", [])) <= 8
               for r in recs), [r["raw"] for r in recs]
    # the adapter's own threshold (its calibration's min_tag_confidence; 0, keep all, unless it was shipped
    # with one) moves the unsure tags aside, and a query keeps at least its most confident tag
    threshold = load_calibration(str(path)).min_tag_confidence
    for r in recs:
        low = r.get("low_confidence_tags", [])
        assert all(0 <= t["confidence"] <= 1 for t in r["tags"] + low), r
        assert len(r["tags"]) == 1 or all(t["confidence"] >= threshold for t in r["tags"]), r
        assert all(t["confidence"] < threshold for t in low), r
        assert all(t["confidence"] <= min(k["confidence"] for k in r["tags"]) for t in low), r
    assert all(r["raw"].startswith('["') for r in recs)  # the compact format it was trained for
    code = next(r for r in recs if "python" in r["query"].lower() or "function" in r["query"].lower())
    assert any("code" in t["tag"] or "python" in t["tag"] for t in code["tags"]), code["tags"]


@pytest.mark.slow
def test_the_base_model_alone_still_tags_in_the_full_format(tmp_path):
    from tests.conftest import REPO

    out = tmp_path / "sample_tags.jsonl"
    res = runner.invoke(app, ["tag", str(REPO / "examples" / "sample.jsonl"), "-o", str(out), "--model",
                              "smollm2-135m-instruct", "--max-new-tokens", "64", "-q"])
    assert res.exit_code == 0, res.output
    recs = read_jsonl(out)
    assert len(recs) == 5
    assert all(r["model"] == "smollm2-135m-instruct" for r in recs)
    parsed = [r for r in recs if r["status"] == "ok" and r["tags"]]
    assert len(parsed) >= 4, [r["raw"] for r in recs]  # the prefilled answer keeps the base model in JSON

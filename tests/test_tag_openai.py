"""The teacher path: tagging through an OpenAI-compatible API that misbehaves like real ones do."""

import pytest
from typer.testing import CliRunner

from instag.cli import app
from instag.tagger.run import TagOptions, tag_file
from tests.conftest import read_jsonl
from tests.openai_test_server import FaultyOpenAIServer, teacher_answer

runner = CliRunner()


def opts(server, **kw):
    base = dict(model="openai:teacher", base_url=server.base_url, api_key="k", concurrency=4, timeout=1.0,
                max_retries=4, backoff_initial=0.01, progress=False)
    base.update(kw)
    return TagOptions(**base)


def test_teacher_answers_are_parsed_with_token_counts_and_cost(alpaca_file, tmp_path):
    out = tmp_path / "t.jsonl"
    with FaultyOpenAIServer() as server:
        s = tag_file(alpaca_file, out, opts(server, price_in=1.0, price_out=2.0))
    recs = read_jsonl(out)
    assert s.tagged == s.ok == 12 and s.errors == 0 and s.retries == 0
    for r in recs:
        assert r["status"] == "ok" and r["model"] == "teacher"
        assert r["raw"] == teacher_answer(r["query"])
        assert [t["tag"] for t in r["tags"]][0] == "short"
    assert s.prompt_tokens == sum(r["prompt_tokens"] for r in recs) > 0
    assert s.cost == pytest.approx((s.prompt_tokens * 1.0 + s.completion_tokens * 2.0) / 1e6)


def test_retries_survive_429_500_malformed_body_and_timeouts(alpaca_file, tmp_path):
    out = tmp_path / "t.jsonl"
    with FaultyOpenAIServer(timeout_sleep=2.0) as server:
        server.faults.extend(["429", "500", "malformed", "timeout", "429", "500"])
        s = tag_file(alpaca_file, out, opts(server))
        assert server.requests == 12 + 6
    assert s.ok == 12 and s.errors == 0 and s.retries == 6
    assert len({r["id"] for r in read_jsonl(out)}) == 12


def test_prose_answer_is_kept_unparsed(alpaca_file, tmp_path):
    out = tmp_path / "t.jsonl"
    with FaultyOpenAIServer() as server:
        server.faults.append("prose")
        s = tag_file(alpaca_file, out, opts(server, concurrency=1))
    assert s.unparsed == 1 and s.ok == 11
    bad = [r for r in read_jsonl(out) if r["status"] == "unparsed"]
    assert bad[0]["raw"] == "Sure, these are the tags you asked for." and bad[0]["tags"] == []


def test_failures_exit_1_and_a_rerun_retries_only_them(alpaca_file, tmp_path, monkeypatch):
    out = tmp_path / "t.jsonl"
    with FaultyOpenAIServer() as server:
        server.faults.extend(["401", "401"])  # not retryable: fail at once
        monkeypatch.setenv("TEACHER_KEY", "k")
        args = ["tag", str(alpaca_file), "-o", str(out), "--model", "openai:teacher", "--base-url",
                server.base_url, "--api-key-env", "TEACHER_KEY", "--concurrency", "1", "-q"]
        res = runner.invoke(app, args)
        assert res.exit_code == 1, res.output
        assert "2 queries failed" in res.output
        errors = [r for r in read_jsonl(out) if r["status"] == "error"]
        assert len(errors) == 2 and "AuthenticationError" in errors[0]["error"]
        requests_before = server.requests
        res = runner.invoke(app, args)
        assert res.exit_code == 0, res.output
        assert server.requests == requests_before + 2
    recs = read_jsonl(out)
    assert len(recs) == 14  # append-only: the two failures stay, their retries follow
    from instag.io import iter_tag_records, latest_by_id

    latest = latest_by_id(iter_tag_records(out))
    assert len(latest) == 12 and all(r["status"] == "ok" for r in latest.values())


def test_wrong_api_key_is_refused_and_reported(alpaca_file, tmp_path):
    out = tmp_path / "t.jsonl"
    with FaultyOpenAIServer(api_key="right") as server:
        s = tag_file(alpaca_file, out, opts(server, api_key="wrong"))
    assert s.errors == 12 and s.retries == 0
    assert all("invalid api key" in r["error"] for r in read_jsonl(out))


def test_missing_api_key_without_base_url_is_a_usage_error(alpaca_file, tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    res = runner.invoke(app, ["tag", str(alpaca_file), "-o", str(tmp_path / "t.jsonl"), "--model", "openai:gpt-4o"])
    assert res.exit_code == 2 and "needs an API key in $OPENAI_API_KEY" in res.output

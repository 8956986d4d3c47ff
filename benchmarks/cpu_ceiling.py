"""How fast can tagging go on this machine at all? The arithmetic a query needs against its matmul rate.

    python benchmarks/cpu_ceiling.py [--model local] [--n 256] [--repeats 3]
        [--results benchmarks/results/tag_throughput_adapter_cpu_block32.json] [--block-size 32]

Counts the floating-point operations one query costs with the model as vLLM runs it here, on the same
queries as ``tag_throughput.py`` (its --n x --repeats sample):

- every prompt token that prefix caching does not serve runs through every decoder layer's linear
  weights (2 FLOPs a weight) and attends over the tokens before it;
- every answer token does the same and also goes through the output head (vLLM computes logits only
  where it samples; the transformers engine too, in generate);
- vLLM's prefix caching keeps whole KV blocks of the prompt template every query shares, so the tokens
  it serves are that shared prefix rounded down to the block size (``--block-size``: instag's CPU
  default); the transformers engine computes the whole template once and starts every batch from it.
  The padding of its batches is not counted: the table counts the work a query needs, not what an
  engine wastes.

Then times fp32 matmuls with torch on all cores: a large square one (the machine's practical peak) and
the model's own MLP shape at 64 rows (64 sequences in flight, instag's CPU default). The ceiling is the
peak divided by the work per query. Rows of ``--results`` (a ``tag_throughput.py`` JSON) are set against
it: the FLOP rate each engine reached, and what the issue's 20x over the one-at-a-time loop would need.
Prints a table and writes benchmarks/results/cpu_ceiling.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from common import REPO, machine, sample_queries, write_json
from rich.console import Console
from rich.table import Table

from instag.tagger.models import resolve, tokenizer_source
from instag.tagger.prompt import render_prompt

WARMUP = 4  # as tag_throughput.py: the sample's last 4 queries only warm an engine up


def model_shape(base: str) -> dict:
    """Weights a token goes through, counted on the model itself (built on the meta device: no memory)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(base)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    layers = model.get_decoder().layers
    linear = sum(p.numel() for p in layers.parameters() if p.dim() == 2)
    head = model.get_output_embeddings().weight.numel()
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    return {"layers": len(layers), "layer_linear_weights": linear, "head_weights": head,
            "attention_width": heads * head_dim, "hidden": cfg.hidden_size,
            "intermediate": getattr(cfg, "intermediate_size", 4 * cfg.hidden_size)}


def flops_per_query(shape: dict, prompt: int, cached: int, answer: float) -> float:
    """FLOPs for one query: ``prompt`` tokens of which ``cached`` come from the cache, ``answer`` new."""
    def attention(ctx: float) -> float:  # q.k and p.v over ctx earlier tokens, every layer
        return 4 * ctx * shape["attention_width"] * shape["layers"]

    fresh = prompt - cached
    prefill = fresh * 2 * shape["layer_linear_weights"] + sum(attention(cached + i + 1) for i in range(fresh))
    decode = answer * (2 * (shape["layer_linear_weights"] + shape["head_weights"]) + attention(prompt + answer / 2))
    return prefill + decode


def matmul_rate(m: int, k: int, n: int, windows: int = 5, seconds: float = 1.0) -> float:
    """fp32 FLOP/s of an (m x k) @ (k x n) matmul with torch's threads (all cores): the best of
    ``windows`` timed windows, since a shared machine's rate moves from one second to the next."""
    import torch

    a, b = torch.randn(m, k), torch.randn(k, n)
    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(windows):
        runs, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            a @ b
            runs += 1
        best = max(best, 2 * m * k * n * runs / (time.perf_counter() - t0))
    return best


def main() -> None:
    from instag.tagger.backends.vllm_engine import CPU_BLOCK_SIZE

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="local")
    ap.add_argument("--n", type=int, default=256, help="queries per run, as tag_throughput.py was given")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--results", nargs="+", default=[str(REPO / "benchmarks/results" / f) for f in (
        "tag_throughput_adapter_cpu_block32.json", "tag_throughput_adapter_cpu_hf_template_cache.json")],
        help="tag_throughput.py JSON files; where several hold an engine, the last one's row counts")
    ap.add_argument("--block-size", type=int, default=CPU_BLOCK_SIZE, help="vLLM's KV block size in those runs")
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/cpu_ceiling.json"))
    args = ap.parse_args()

    import torch
    from transformers import AutoTokenizer

    resolved = resolve(args.model)
    shape = model_shape(resolved.base)
    tok = AutoTokenizer.from_pretrained(tokenizer_source(resolved))
    queries = sample_queries(args.n * args.repeats + WARMUP)[:-WARMUP]

    def prompts(prefill: bool) -> list[list[int]]:
        texts = [render_prompt(tok, q, resolved.target, prefill=prefill) for q in queries]
        return tok(texts, add_special_tokens=False)["input_ids"]

    guided_ids = prompts(False)  # as vLLM gets them (guided); the transformers engine's end in the prefix
    guided, prefilled = [len(ids) for ids in guided_ids], [len(ids) for ids in prompts(True)]
    shared = len(os.path.commonprefix(guided_ids))  # the template every prompt starts with
    cached = shared // args.block_size * args.block_size

    by_engine: dict[str, dict] = {}
    for path in args.results:
        for row in json.loads(Path(path).read_text())["results"] if Path(path).exists() else []:
            by_engine[row["engine"]] = {**row, "file": Path(path).name}
    rows = list(by_engine.values())
    vllm_answer = next((r["output_tokens"] / r["n"] for r in rows if r["engine"].startswith("vllm")), 17.0)

    def work(engine: str, answer: float) -> float:  # mean FLOPs per query over the sample, for an engine
        if engine.startswith("hf"):  # the whole template cached once; the answer prefix is in the prompt
            return statistics.fmean(flops_per_query(shape, p, shared, answer) for p in prefilled)
        return statistics.fmean(flops_per_query(shape, p, cached, answer) for p in guided)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; timing matmuls ...", flush=True)
    peak = matmul_rate(4096, 4096, 4096)
    hidden, inter = shape["hidden"], shape["intermediate"]
    at_64 = matmul_rate(64, hidden, inter)

    per_query = {
        "vllm, no prefix cache": statistics.fmean(flops_per_query(shape, p, 0, vllm_answer) for p in guided),
        f"vllm, {args.block_size}-token blocks cached ({cached} tokens)": work("vllm", vllm_answer),
        f"vllm, the whole shared prefix cached ({shared} tokens)":
            statistics.fmean(flops_per_query(shape, p, shared, vllm_answer) for p in guided),
    }
    base = next((r["queries_per_s"] for r in rows if r["engine"] == "hf1"), None)

    table = Table(title=f"{resolved.name} on {os.cpu_count()} cores: fp32 matmul peak {peak / 1e9:.0f} GFLOP/s "
                        f"({at_64 / 1e9:.0f} at the MLP's shape, 64 rows)")
    for col in ("", "GFLOP/query", "queries/s", "GFLOP/s", "% of peak"):
        table.add_column(col, justify="right")
    ceilings = {}
    for name, f in per_query.items():
        ceilings[name] = peak / f
        table.add_row(f"ceiling: {name}", f"{f / 1e9:.1f}", f"{peak / f:.2f}", f"{peak / 1e9:.0f}", "100")
    measured = []
    for r in rows:
        f = work(r["engine"], r["output_tokens"] / r["n"])
        measured.append({"engine": r["engine"], "file": r["file"], "queries_per_s": r["queries_per_s"],
                         "gflop_per_query": f / 1e9, "gflop_per_s": r["queries_per_s"] * f / 1e9,
                         "share_of_peak": r["queries_per_s"] * f / peak})
        table.add_row(f"measured: {r['engine']}", f"{f / 1e9:.1f}", f"{r['queries_per_s']:.2f}",
                      f"{measured[-1]['gflop_per_s']:.0f}", f"{100 * measured[-1]['share_of_peak']:.0f}")
    target = None
    if base:
        f = work("vllm", vllm_answer)
        target = {"one_at_a_time_queries_per_s": base, "queries_per_s_for_20x": 20 * base,
                  "gflop_per_s_for_20x": 20 * base * f / 1e9, "ceiling_x_one_at_a_time": peak / f / base}
        table.add_row("20x the one-at-a-time loop", f"{f / 1e9:.1f}", f"{20 * base:.2f}",
                      f"{20 * base * f / 1e9:.0f}", f"{100 * 20 * base * f / peak:.0f}")
    Console(width=120).print(table)
    if target:
        print(f"the ceiling is {target['ceiling_x_one_at_a_time']:.1f}x the one-at-a-time loop ({base:.2f} queries/s)")
    write_json(args.out, {
        "benchmark": "cpu_ceiling", "model": resolved.describe(), "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
        "queries": len(queries), "shape": shape,
        "prompt_tokens_mean": {"vllm_guided": statistics.fmean(guided), "prefilled": statistics.fmean(prefilled)},
        "shared_prefix_tokens": shared, "block_size": args.block_size,
        "cached_tokens": cached, "answer_tokens_mean_vllm": vllm_answer,
        "matmul_gflop_per_s": {"4096x4096x4096": peak / 1e9, f"64x{hidden}x{inter}": at_64 / 1e9},
        "gflop_per_query": {k: v / 1e9 for k, v in per_query.items()},
        "ceiling_queries_per_s": ceilings, "measured": measured, "target_20x": target,
    })


if __name__ == "__main__":
    main()

"""CPU cost of guided decoding per answer token: xgrammar's token mask and state update, as vLLM runs them.

    python benchmarks/grammar_cost.py [--model local] [--answers data/seed/held_out.jsonl] [--repeats 3]

vLLM's engine core fills a token bitmask for every guided sequence at every step and advances its
grammar with the sampled token, on the CPU. This replays the canonical answers of the held-out seed
set (what the tagger is trained to write) after the prefilled opening, token by token, through the
grammar vLLM compiles for the answer pattern (xgrammar, ``compile_regex`` of ``prompt.answer_pattern``),
and times both calls. Prints a table and writes benchmarks/results/grammar_cost.json.
"""

from __future__ import annotations

import argparse
import statistics
import time
from importlib.metadata import version

from common import REPO, machine, write_json
from rich.console import Console
from rich.table import Table

from instag.io import iter_jsonl_records
from instag.tagger.models import resolve, tokenizer_source
from instag.tagger.prompt import ANSWER_PREFIX, TARGETS, answer_pattern, format_answer


def replay(ctx, info, token_lists: list[list[int]]) -> dict:  # noqa: ANN001
    """Mask fill and state update per token over every answer; counts answers the grammar rejects."""
    import xgrammar as xgr

    bitmask = xgr.allocate_token_bitmask(1, info.vocab_size)
    fill = accept = 0.0
    tokens = rejected = 0
    for ids in token_lists:
        matcher = xgr.GrammarMatcher(ctx)
        for t in ids:
            t0 = time.perf_counter()
            matcher.fill_next_token_bitmask(bitmask, 0)
            t1 = time.perf_counter()
            ok = matcher.accept_token(t)
            accept += time.perf_counter() - t1
            fill += t1 - t0
            tokens += 1
            if not ok:
                rejected += 1
                break
    return {"tokens": tokens, "fill_us": fill / tokens * 1e6, "accept_us": accept / tokens * 1e6,
            "rejected_answers": rejected}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="local", help="whose tokenizer (the vocabulary the mask covers)")
    ap.add_argument("--answers", default=str(REPO / "data" / "seed" / "held_out.jsonl"),
                    help="tagged JSONL (records with 'tags') whose canonical answers are replayed")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "grammar_cost.json"))
    args = ap.parse_args()

    import xgrammar as xgr
    from transformers import AutoTokenizer

    resolved = resolve(args.model)
    tok = AutoTokenizer.from_pretrained(tokenizer_source(resolved))
    info = xgr.TokenizerInfo.from_huggingface(tok, vocab_size=len(tok))
    compiler = xgr.GrammarCompiler(info)
    records = [rec for _, rec in iter_jsonl_records(args.answers) if rec.get("tags")]
    rows = []
    for target in TARGETS:
        t0 = time.perf_counter()
        ctx = compiler.compile_regex(answer_pattern(target))
        compile_s = time.perf_counter() - t0
        prefix = len(ANSWER_PREFIX[target])  # the prompt holds the opening; the grammar sees the rest
        answers = [tok.encode(format_answer(rec["tags"], target)[prefix:], add_special_tokens=False)
                   + [tok.eos_token_id] for rec in records]
        runs = [replay(ctx, info, answers) for _ in range(args.repeats)]
        med = sorted(runs, key=lambda r: r["fill_us"] + r["accept_us"])[len(runs) // 2]
        rows.append({"target": target, "answers": len(answers),
                     "tokens_per_answer": statistics.mean(map(len, answers)), "compile_s": compile_s, **med,
                     "us_per_token_all": [round(r["fill_us"] + r["accept_us"], 1) for r in runs]})
        print(rows[-1], flush=True)

    table = Table(title=f"guided decoding CPU cost per token: {resolved.name} vocabulary ({info.vocab_size} tokens), "
                        f"median of {args.repeats}")
    for col in ("answer format", "answers", "tokens/answer", "mask fill µs", "accept µs", "µs per answer",
                "rejected"):
        table.add_column(col, justify="right")
    for r in rows:
        per_answer = (r["fill_us"] + r["accept_us"]) * r["tokens_per_answer"]
        table.add_row(r["target"], str(r["answers"]), f"{r['tokens_per_answer']:.1f}", f"{r['fill_us']:.1f}",
                      f"{r['accept_us']:.1f}", f"{per_answer:.0f}", str(r["rejected_answers"]))
    Console().print(table)
    write_json(args.out, {"benchmark": "grammar_cost", "model": resolved.describe(), "answers": args.answers,
                          "xgrammar": version("xgrammar"), "repeats": args.repeats, "machine": machine(),
                          "results": rows, "date": time.strftime("%Y-%m-%d")})


if __name__ == "__main__":
    main()

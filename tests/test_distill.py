"""Distillation on a tiny random LLaMA: label mask, real optimizer steps, save/reload, resume; eval metrics."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from instag.cli import app
from instag.distill.data import IGNORE, build_example, build_examples
from instag.distill.evaluate import PRF, evaluate_predictions, match_semantic, score
from instag.distill.train import DistillConfig, distill
from instag.tagger.prompt import ANSWER_PREFIX, format_answer, render_prompt
from tests.conftest import read_jsonl, write_jsonl

TEACHER = [
    ("Write a Python function to reverse a linked list.", ["python programming", "data structures", "linked list"]),
    ("Natalia sold 48 clips in April and half as many in May. How many in total?", ["math", "arithmetic", "word problem"]),
    ("Translate 'good morning' into French.", ["translation", "french"]),
    ("Write a haiku about autumn leaves.", ["creative writing", "poetry", "haiku"]),
    ("Explain how vaccines train the immune system.", ["biology", "explanation", "immunology"]),
    ("Plan a 3-day trip to Kyoto on a $500 budget.", ["travel planning", "itinerary", "budget constraint"]),
]


@pytest.fixture
def teacher_file(tmp_path):
    rows = [{"id": f"t{i}", "source": "test", "query": q, "status": "ok", "model": "llm-teacher",
             "tags": [{"tag": t, "explanation": f"about {t}"} for t in tags]} for i, (q, tags) in enumerate(TEACHER)]
    rows.append({"id": "u", "source": "test", "query": "x", "status": "unparsed", "tags": [], "raw": "?"})
    return write_jsonl(tmp_path / "teacher.jsonl", rows)


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.mark.parametrize("target", ["tags", "tags+explanations"])
def test_label_mask_covers_only_the_answer(tok, target):
    rec = {"id": "a", "query": TEACHER[0][0], "tags": [{"tag": t, "explanation": "e"} for t in TEACHER[0][1]]}
    ex = build_example(tok, rec, target, max_length=512)
    n_prompt = sum(1 for x in ex.labels if x == IGNORE)
    assert ex.labels[:n_prompt] == [IGNORE] * n_prompt and IGNORE not in ex.labels[n_prompt:]
    assert tok.decode(ex.input_ids[:n_prompt]) == render_prompt(tok, rec["query"], target)
    answer = format_answer(rec["tags"], target)
    assert tok.decode(ex.labels[n_prompt:]) == answer[len(ANSWER_PREFIX[target]):] + tok.eos_token


def test_long_query_is_cut_not_the_answer(tok):
    rec = {"id": "a", "query": "long " * 2000, "tags": [{"tag": "repetition", "explanation": ""}]}
    ex = build_example(tok, rec, "tags", max_length=256)
    assert len(ex.input_ids) <= 256
    n_prompt = ex.labels.count(IGNORE)
    assert tok.decode(ex.labels[n_prompt:]) == 'repetition"]' + tok.eos_token


def _mean_loss(model_dir_or_adapter, tok, examples):
    import torch

    from instag.tagger.models import load_model, resolve

    _, model = load_model(resolve(str(model_dir_or_adapter)), device="cpu", dtype="float32")
    losses = []
    with torch.no_grad():
        for ex in examples:
            out = model(input_ids=torch.tensor([ex.input_ids]), labels=torch.tensor([ex.labels]))
            losses.append(out.loss.item())
    return float(np.mean(losses))


def test_training_steps_reduce_loss_and_the_adapter_reloads_and_tags(tiny_model_dir, tok, teacher_file, tmp_path):
    out = tmp_path / "adapter"
    cfg = DistillConfig(train=str(teacher_file), output=str(out), base=str(tiny_model_dir), target="tags",
                        r=8, alpha=16, epochs=1, max_steps=24, lr=5e-3, batch_size=3, save_steps=12, seed=0)
    res = distill(cfg, progress=False)
    assert res.train_examples == 6  # the unparsed record is not trained on
    examples = build_examples(tok, teacher_file, "tags", 512).examples
    before, after = _mean_loss(tiny_model_dir, tok, examples), _mean_loss(out, tok, examples)
    assert after < before - 0.5, (before, after)
    # a standard peft adapter directory, plus instag's metadata and a card
    for name in ("adapter_config.json", "adapter_model.safetensors", "instag_adapter.json", "README.md"):
        assert (out / name).exists(), name
    meta = json.loads((out / "instag_adapter.json").read_text())
    assert meta["target"] == "tags" and meta["base"] == str(tiny_model_dir)
    # the tagger picks up the format from the metadata and generates with base + adapter
    tags_out = tmp_path / "pred.jsonl"
    res = CliRunner().invoke(app, ["tag", str(teacher_file), "-o", str(tags_out), "--model", str(out),
                                   "--max-new-tokens", "12", "-q"])
    assert res.exit_code == 0, res.output
    recs = read_jsonl(tags_out)
    assert len(recs) == 7 and all(r["raw"].startswith('["') for r in recs)  # compact prefill
    assert all(r["model"] == "adapter" for r in recs)


def test_training_resumes_from_the_latest_checkpoint(tiny_model_dir, teacher_file, tmp_path):
    out = tmp_path / "adapter"
    base = dict(train=str(teacher_file), output=str(out), base=str(tiny_model_dir), r=4, alpha=8, batch_size=3,
                save_steps=4, seed=0)
    distill(DistillConfig(**base, max_steps=8), progress=False)
    assert (out / "run" / "checkpoint-8").exists()
    from transformers import TrainerCallback

    class Steps(TrainerCallback):
        done: list = []

        def on_step_end(self, args, state, control, **kw):
            self.done.append(state.global_step)

    res = distill(DistillConfig(**base, max_steps=12), progress=False, callbacks=[Steps()])
    assert Steps.done == [9, 10, 11, 12]  # only the new steps ran: it resumed at step 8
    assert max(h["step"] for h in res.log_history) == 12


def test_a_checkpoint_is_written_at_the_end_of_each_epoch(tiny_model_dir, teacher_file, tmp_path):
    out = tmp_path / "adapter"
    # 6 usable examples, batch 3: 2 optimizer steps per epoch; save_steps far away, so only epoch ends save
    distill(DistillConfig(train=str(teacher_file), output=str(out), base=str(tiny_model_dir), r=4, alpha=8,
                          batch_size=3, epochs=2, save_steps=1000, seed=0), progress=False)
    ckpts = sorted(p.name for p in (out / "run").glob("checkpoint-*"))
    assert ckpts == ["checkpoint-2", "checkpoint-4"]
    state = json.loads((out / "run" / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["epoch"] == 1.0
    # each epoch's adapter is kept apart (step checkpoints rotate away), for choosing the epoch on a dev set
    for ep, step in ((1, 2), (2, 4)):
        kept = out / "epochs" / f"epoch-{ep}"
        assert (kept / "adapter_model.safetensors").exists() and (kept / "adapter_config.json").exists()
        assert json.loads((kept / "trainer_state.json").read_text())["global_step"] == step


def test_a_run_continues_from_a_trained_adapter(tiny_model_dir, tok, teacher_file, tmp_path):
    """--init-adapter: the new run starts from the given adapter's weights (its loss where that one ended),
    saved in float16 as the shipped tagger is, and trains them further with a fresh schedule."""
    import torch
    from safetensors.torch import load_file, save_file

    first = tmp_path / "first"
    common = dict(train=str(teacher_file), base=str(tiny_model_dir), target="tags", batch_size=3, seed=0)
    distill(DistillConfig(**common, output=str(first), r=8, alpha=16, max_steps=12, lr=5e-3), progress=False)
    weights = first / "adapter_model.safetensors"
    save_file({k: v.to(torch.float16) for k, v in load_file(weights).items()}, weights)  # as shipped
    examples = build_examples(tok, teacher_file, "tags", 512).examples
    trained = _mean_loss(first, tok, examples)
    assert trained < _mean_loss(tiny_model_dir, tok, examples) - 0.5

    second = tmp_path / "second"
    res = distill(DistillConfig(**common, output=str(second), r=4, max_steps=5, lr=1e-3, init_adapter=str(first)),
                  progress=False)
    assert abs(res.train_loss_first - trained) < 0.5 * trained  # it starts where the first run ended
    assert json.loads((second / "adapter_config.json").read_text())["r"] == 8  # the adapter's shape, not r=4
    assert load_file(second / "adapter_model.safetensors").keys() == load_file(weights).keys()
    with pytest.raises(ValueError, match="not a base model|LoRA adapter"):
        distill(DistillConfig(**common, output=str(tmp_path / "x"), max_steps=1, init_adapter=str(tiny_model_dir)),
                progress=False)


# ---------------------------------------------------------------- evaluation metrics


def test_prf_arithmetic():
    p = PRF(tp=3, n_pred=4, n_gold=6)
    assert (p.precision, p.recall) == (0.75, 0.5) and p.f1 == pytest.approx(0.6)
    assert PRF().f1 == 0.0


def test_exact_and_rule_levels_by_hand():
    preds = [["Python Programming", "sorting", "lists"], ["math"]]
    golds = [["python programming", "sorting"], ["Math!", "word problem", "arithmetic"]]
    levels = score(preds, golds, embed=None)
    # exact: "sorting" only -> tp 1 of 4 predicted, 5 gold
    assert levels["exact"].tp == 1 and levels["exact"].n_pred == 4 and levels["exact"].n_gold == 5
    # rule: + python programming, + math -> tp 3
    assert levels["rule"].tp == 3
    assert levels["rule"].precision == pytest.approx(3 / 4) and levels["rule"].recall == pytest.approx(3 / 5)
    assert levels["rule"].f1 == pytest.approx(2 * 0.75 * 0.6 / 1.35)


def test_semantic_matching_is_greedy_one_to_one():
    v = {"a": np.array([1.0, 0.0]), "a2": np.array([0.96, 0.28]), "b": np.array([0.0, 1.0]),
         "c": np.array([0.6, 0.8])}
    # a~a2 (0.96) and a~c (0.6) ...: one-to-one, so "a" can match only one gold tag
    assert match_semantic(["a"], ["a2", "a"], v, threshold=0.8) == 1
    assert match_semantic(["a", "a2"], ["a"], v, threshold=0.8) == 1
    assert match_semantic(["a", "b"], ["a2", "c"], v, threshold=0.8) == 2  # b~c 0.8 passes at >=
    assert match_semantic(["a", "b"], ["a2", "c"], v, threshold=0.81) == 1


def test_evaluate_predictions_counts_parse_failures_and_missing(tmp_path):
    gold = write_jsonl(tmp_path / "gold.jsonl", [
        {"id": "1", "query": "q1", "status": "ok", "tags": [{"tag": "math"}, {"tag": "algebra"}]},
        {"id": "2", "query": "q2", "status": "ok", "tags": [{"tag": "coding"}]},
        {"id": "3", "query": "q3", "status": "ok", "tags": [{"tag": "travel"}]}])
    pred = write_jsonl(tmp_path / "pred.jsonl", [
        {"id": "1", "query": "q1", "status": "ok", "tags": [{"tag": "Math"}, {"tag": "geometry"}]},
        {"id": "2", "query": "q2", "status": "unparsed", "tags": [], "raw": "blah"}])
    m = evaluate_predictions(pred, gold, embed=None)
    assert m["queries"] == 2 and m["missing_predictions"] == 1 and m["parse_failures"] == 1
    assert m["parse_failure_rate"] == 0.5
    assert m["levels"]["exact"]["tp"] == 0 and m["levels"]["rule"]["tp"] == 1
    assert m["levels"]["rule"]["precision"] == 0.5 and m["levels"]["rule"]["recall"] == pytest.approx(1 / 3)
    assert m["avg_pred_tags"] == 1.0 and m["avg_gold_tags"] == 1.5

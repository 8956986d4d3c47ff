from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach a model hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def instag_env(**extra: str) -> dict[str, str]:
    """Environment for a subprocess that must import this checkout's instag (not an installed one)."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict]:
    # "\n" only: splitlines() would also split at U+2028 / U+0085 inside JSON strings (ShareGPT has them)
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


@pytest.fixture(scope="session")
def embedded_gguf() -> Path:
    from instag.tagger.models import gguf_path, load_registry

    return gguf_path(load_registry()["models"]["smollm2-135m-instruct"])


@pytest.fixture(scope="session")
def embedded_dir() -> Path:
    """The embedded SmolLM2-135M-Instruct as a dense checkpoint (converted once, cached)."""
    from instag.tagger.models import prepare

    return prepare("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, embedded_gguf) -> Path:
    """A randomly initialised 2-layer LLaMA with SmolLM2's tokenizer and chat template (head_dim 64)."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny-llama")
    tok = AutoTokenizer.from_pretrained(embedded_gguf.parent, gguf_file=embedded_gguf.name)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=64, max_position_embeddings=2048,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                     pad_token_id=tok.pad_token_id).save_pretrained(out)
    return out


@pytest.fixture
def alpaca_file(tmp_path) -> Path:
    rows = [{"instruction": f"Write a short poem about the number {i}.", "input": "" if i % 2 else "Use rhymes.",
             "source": "poems"} for i in range(12)]
    return write_jsonl(tmp_path / "alpaca.jsonl", rows)


def split_confidences(rec: dict) -> tuple[dict, list]:
    """(the record without its tags' confidences, the confidences): engines with other thread counts or
    batches agree on tags exactly, on probabilities only to float tolerance."""
    tags = [{k: v for k, v in t.items() if k != "confidence"} for t in rec.get("tags") or []]
    return {**rec, "tags": tags}, [t.get("confidence") for t in rec.get("tags") or []]


def assert_same_records(got: dict[str, dict], want: dict[str, dict], tol: float = 2e-3) -> None:
    """The same records by id, confidences within ``tol`` (or absent in both: a tag not written as a
    closed JSON string, which only a random model does)."""
    assert got.keys() == want.keys()
    for k in want:
        g, gc = split_confidences(got[k])
        w, wc = split_confidences(want[k])
        assert g == w, (k, g, w)
        assert all((a is None and b is None) or (a is not None and b is not None and abs(a - b) <= tol)
                   for a, b in zip(gc, wc)), (k, gc, wc)

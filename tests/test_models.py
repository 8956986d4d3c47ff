import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from instag.cli import app
from instag.tagger.models import ModelError, resolve


def test_resolve_checkpoint_dir_and_bad_paths(tiny_model_dir, tmp_path):
    r = resolve(str(tiny_model_dir))
    assert r.base == str(tiny_model_dir) and r.adapter is None and r.target == "tags+explanations"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="neither a model checkpoint"):
        resolve(str(tmp_path / "empty"))
    with pytest.raises(ModelError, match="not a checkpoint directory"):
        resolve(str(tmp_path / "missing"))
    assert resolve("HuggingFaceTB/SmolLM2-360M-Instruct").base == "HuggingFaceTB/SmolLM2-360M-Instruct"


def test_resolve_adapter_dir_reads_base_and_target(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    model.save_pretrained(tmp_path / "adapter")
    (tmp_path / "adapter" / "instag_adapter.json").write_text(json.dumps(
        {"base": str(tiny_model_dir), "target": "tags", "name": "my-tagger"}))
    r = resolve(str(tmp_path / "adapter"))
    assert (r.name, r.base, r.adapter, r.target) == ("my-tagger", str(tiny_model_dir),
                                                      str(tmp_path / "adapter"), "tags")


@pytest.mark.slow
def test_embedded_dense_checkpoint_matches_the_gguf_model(embedded_dir, embedded_gguf):
    """The dequantized float32 checkpoint gives the GGUF model's logits."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(embedded_dir)
    dense = AutoModelForCausalLM.from_pretrained(embedded_dir, dtype=torch.float32).eval()
    packed = AutoModelForCausalLM.from_pretrained(embedded_gguf.parent, gguf_file=embedded_gguf.name,
                                                  dtype=torch.float32).eval()
    assert dense.num_parameters() == 134_515_008
    for prompt in ["Hello, how are you?", "Write a Python function that reverses a list.",
                   "Natalia sold clips to 48 of her friends in April."]:
        ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)["input_ids"]
        with torch.no_grad():
            a, b = dense(ids).logits, packed(ids).logits
        assert torch.allclose(a, b, atol=1e-4), (a - b).abs().max()
        assert torch.equal(a.argmax(-1), b.argmax(-1))


@pytest.mark.slow
def test_models_cli_lists_and_prepares(embedded_dir):
    runner = CliRunner()
    res = runner.invoke(app, ["models", "prepare", "local"])
    assert res.exit_code == 0 and "smollm2-135m-instruct" in res.output
    res = runner.invoke(app, ["models", "list"])
    assert res.exit_code == 0 and "prepared" in res.output


def test_merged_adapter_gives_the_adapters_logits_and_is_made_once(tiny_model_dir, tmp_path, monkeypatch):
    """What vLLM loads on CPU: the adapter folded into its base, cached, rebuilt when the adapter changes."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    from instag.tagger.models import MERGE_META, merge_adapter

    monkeypatch.setenv("INSTAG_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                                LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"],
                                           init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "tagger")
    (tmp_path / "tagger" / "instag_adapter.json").write_text(json.dumps(
        {"base": str(tiny_model_dir), "target": "tags", "name": "my-tagger"}))
    resolved = resolve(str(tmp_path / "tagger"))

    merged = merge_adapter(resolved)
    assert (merged.name, merged.adapter, merged.target) == ("my-tagger", None, "tags")
    assert merged.base.startswith(str(tmp_path / "cache"))
    ids = torch.tensor([[1, 50, 300, 7, 99, 4]])
    lora = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tmp_path / "tagger").eval()
    dense = AutoModelForCausalLM.from_pretrained(merged.base).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    with torch.no_grad():
        a, b, c = lora(ids).logits, dense(ids).logits, base(ids).logits
    assert torch.allclose(a, b, atol=1e-4), (a - b).abs().max()
    assert not torch.allclose(a, c, atol=1e-3)  # the adapter does change the model

    meta = Path(merged.base) / MERGE_META
    stamp = meta.stat().st_mtime_ns
    assert merge_adapter(resolved).base == merged.base and meta.stat().st_mtime_ns == stamp  # cached
    weights = tmp_path / "tagger" / "adapter_model.safetensors"
    os.utime(weights, ns=(stamp + 10**9, stamp + 10**9))  # a retrained adapter is merged again
    assert merge_adapter(resolved).base == merged.base and meta.stat().st_mtime_ns != stamp

"""Copy a trained adapter into models/ (or $INSTAG_MODELS_DIR) with its card and eval numbers, and register it.

    python scripts/ship_adapter.py RUN_DIR --eval EVAL_DIR [--baseline BASE_EVAL_DIR] [--name NAME] [--default]

RUN_DIR is what `instag distill -o` wrote; EVAL_DIR and BASE_EVAL_DIR what `instag eval -o` wrote for the
adapter and for the base model. Only the files a user needs travel (the peft adapter, instag's metadata,
the tokenizer, the training log and the eval metrics), not the resumable checkpoints under run/; the LoRA
weights are stored as float16. The copy's adapter_config.json names the upstream base model, so that peft
and vLLM users see which model it belongs to; instag itself takes the base from instag_adapter.json (the
embedded model's registry name). With --default, `--model local` uses this adapter. Evaluate the copy
itself (`instag eval --model models/NAME`) and ship again with that eval, so the card describes the copy.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from instag.distill.train import write_card  # noqa: E402
from instag.tagger.confidence import CALIBRATION_FILE  # noqa: E402
from instag.tagger.models import ADAPTER_META, load_registry, models_dir  # noqa: E402

FILES = ["adapter_model.safetensors", "adapter_config.json", ADAPTER_META, "log_history.json",
         "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
         CALIBRATION_FILE]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--eval", dest="eval_dir", type=Path, required=True)
    ap.add_argument("--baseline", type=Path)
    ap.add_argument("--name")
    ap.add_argument("--default", action="store_true")
    a = ap.parse_args()

    meta = json.loads((a.run_dir / ADAPTER_META).read_text())
    name = a.name or meta["name"]
    dest = models_dir() / name  # where load_registry() and `--model local` look
    dest.mkdir(parents=True, exist_ok=True)
    for f in FILES:
        if (a.run_dir / f).exists():
            shutil.copy2(a.run_dir / f, dest / f)
    # float16 halves the file; peft and vLLM cast adapter weights to the model's dtype when they load them
    weights = dest / "adapter_model.safetensors"
    save_file({k: v.to(torch.float16) for k, v in load_file(weights).items()}, weights, metadata={"format": "pt"})
    metrics = json.loads((a.eval_dir / "metrics.json").read_text())
    baseline = json.loads((a.baseline / "metrics.json").read_text()) if a.baseline else None
    shutil.copy2(a.eval_dir / "metrics.json", dest / "eval_metrics.json")
    if baseline:
        shutil.copy2(a.baseline / "metrics.json", dest / "eval_metrics_base.json")

    reg = load_registry()
    base_entry = reg["models"].get(meta["base"], {})
    cfg_path = dest / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = base_entry.get("upstream", meta["base"])
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    meta["name"] = name
    (dest / ADAPTER_META).write_text(json.dumps(meta, indent=2) + "\n")
    notes = [f"Base weights (`{meta['base']}`): {base_entry['description']}"] if base_entry.get("description") else []
    write_card(dest, meta, metrics, baseline, notes)

    adapters = reg.setdefault("adapters", {})
    if a.default:
        for entry in adapters.values():
            entry.pop("default", None)
    adapters[name] = {
        "path": name, "base": meta["base"], "target": meta["target"],
        "description": f"LoRA adapter distilled from {meta['train_examples']} teacher-tagged seed queries "
                       f"({meta['target']} format); F1 vs teacher on held-out: "
                       + ", ".join(f"{k} {v['f1']:.3f}" for k, v in metrics["levels"].items()),
        **({"default": True} if a.default else {}),
    }
    (models_dir() / "registry.json").write_text(json.dumps(reg, indent=2) + "\n")
    size = sum(p.stat().st_size for p in dest.iterdir())
    print(f"{dest}: {len(list(dest.iterdir()))} files, {size / 1e6:.1f} MB; registered as {name!r}"
          f"{' (default for --model local)' if a.default else ''}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

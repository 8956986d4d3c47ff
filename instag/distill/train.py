"""LoRA distillation with peft and the transformers Trainer (checkpoints, resume, logging).

The result is a standard peft adapter directory (loads unchanged in transformers+peft and in vLLM's
LoRA support) plus ``instag_adapter.json`` (base model spec, answer format, training facts) and a
model card ``README.md``.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from instag.distill.data import build_examples
from instag.tagger.models import ADAPTER_META, ResolvedModel, resolve

log = logging.getLogger(__name__)


@dataclass
class DistillConfig:
    train: str
    output: str
    base: str = "smollm2-135m-instruct"
    target: str = "tags"
    eval_file: str | None = None
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj",
                                                                "gate_proj", "up_proj", "down_proj"])
    epochs: float = 3.0
    lr: float = 2e-4
    batch_size: int = 8
    grad_accum: int = 1
    max_length: int = 512
    seed: int = 0
    warmup_ratio: float = 0.05
    save_steps: int = 50  # a checkpoint every save_steps optimizer steps; resume starts from the latest
    name: str | None = None
    max_steps: int = -1  # for smoke runs
    bf16: bool | None = None  # None: where the hardware computes bf16 natively (bf16_native())
    init_adapter: str | None = None  # continue from this adapter's weights (its LoRA shape wins over r/alpha)


@dataclass
class DistillResult:
    adapter_dir: Path
    train_examples: int
    train_loss_first: float | None
    train_loss_last: float | None
    eval_loss: float | None
    seconds: float
    log_history: list[dict[str, Any]]


def _resolve_base(spec: str) -> ResolvedModel:
    resolved = resolve(spec)
    if resolved.adapter:
        raise ValueError(f"--base must be a base model, not an adapter ({spec})")
    return resolved


def bf16_native() -> bool:
    """Whether bf16 mixed precision runs natively here: a CUDA GPU that supports it, or a CPU with
    AVX-512 BF16 or AMX (elsewhere the CPU emulates bf16 and autocast only slows training down)."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    if probe is not None and probe():
        return True
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def latest_checkpoint(run_dir: Path) -> str | None:
    ckpts = sorted(run_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    return str(ckpts[-1]) if ckpts else None


def _save_each_epoch(out: Path):
    """A Trainer callback that also checkpoints at the end of every epoch (besides every save_steps) and
    keeps that epoch's adapter as ``out/epochs/epoch-N``: the rotation of step checkpoints would delete
    it, and choosing the epoch on a dev set needs every one."""
    import shutil

    from transformers import TrainerCallback

    class SaveEachEpoch(TrainerCallback):
        epoch_end = False

        def on_epoch_end(self, args, state, control, **kwargs):
            control.should_save = True
            self.epoch_end = True
            return control

        def on_save(self, args, state, control, **kwargs):
            if self.epoch_end and state.is_world_process_zero:
                ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                dest = out / "epochs" / f"epoch-{round(state.epoch)}"
                dest.mkdir(parents=True, exist_ok=True)
                for f in ckpt.iterdir():  # the adapter and its config, not the optimizer state
                    if f.name.startswith("adapter_") or f.name == "trainer_state.json":
                        shutil.copy2(f, dest / f.name)
            self.epoch_end = False
            return control

    return SaveEachEpoch()


def _continue_from(model, spec: str, base: ResolvedModel):  # noqa: ANN001, ANN202
    """The base model with a trained adapter loaded as trainable, in float32 (shipped adapters are saved in
    float16): a new run continues from its weights with a fresh optimizer and schedule."""
    import torch
    from peft import PeftModel

    init = resolve(spec)
    if not init.adapter:
        raise ValueError(f"--init-adapter must be a LoRA adapter, not a base model ({spec})")
    if init.base != base.base:
        raise ValueError(f"--init-adapter {spec} was trained on {init.base}, not on --base {base.base}")
    model = PeftModel.from_pretrained(model, init.adapter, is_trainable=True)
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.to(torch.float32)
    log.info("continuing from adapter %s", init.adapter)
    return model


def distill(cfg: DistillConfig, resume: bool = True, progress: bool = True, callbacks: list | None = None
            ) -> DistillResult:
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import (AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer,
                              TrainingArguments, set_seed)

    t0 = time.time()
    set_seed(cfg.seed)
    random.seed(cfg.seed)
    out = Path(cfg.output)
    run_dir = out / "run"
    base = _resolve_base(cfg.base)
    tok = AutoTokenizer.from_pretrained(base.base)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    train = build_examples(tok, Path(cfg.train), cfg.target, cfg.max_length)
    if not train.examples:
        raise ValueError(f"{cfg.train}: no usable teacher records (parsed, with tags)")
    eval_data = build_examples(tok, Path(cfg.eval_file), cfg.target, cfg.max_length) if cfg.eval_file else None
    log.info("train examples %d (skipped: %d unparsed, %d without tags, %d too long)", len(train.examples),
             train.skipped_status, train.skipped_empty, train.skipped_too_long)

    model = AutoModelForCausalLM.from_pretrained(base.base, dtype=torch.float32)
    if cfg.init_adapter:
        model = _continue_from(model, cfg.init_adapter, base)
    else:
        lora = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                          target_modules=cfg.target_modules, task_type="CAUSAL_LM")
        model = get_peft_model(model, lora)

    def to_ds(examples):
        return Dataset.from_list([e.to_dict() for e in examples])

    bf16 = bf16_native() if cfg.bf16 is None else cfg.bf16
    log.info("bf16 mixed precision: %s", bf16)
    args = TrainingArguments(
        bf16=bf16, output_dir=str(run_dir), num_train_epochs=cfg.epochs, max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size, per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, learning_rate=cfg.lr, warmup_steps=cfg.warmup_ratio,
        lr_scheduler_type="cosine", logging_steps=5, save_strategy="steps", save_steps=cfg.save_steps,
        save_total_limit=2, eval_strategy="epoch" if eval_data else "no", seed=cfg.seed, data_seed=cfg.seed,
        report_to=[], disable_tqdm=not progress, use_cpu=not torch.cuda.is_available(),
        train_sampling_strategy="group_by_length", dataloader_num_workers=0, remove_unused_columns=False,
    )
    trainer = Trainer(model=model, args=args, train_dataset=to_ds(train.examples),
                      eval_dataset=to_ds(eval_data.examples) if eval_data else None,
                      data_collator=DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100),
                      callbacks=[_save_each_epoch(out), *(callbacks or [])])
    ckpt = latest_checkpoint(run_dir) if resume else None
    if ckpt:
        log.warning("resuming from %s", ckpt)
    trainer.train(resume_from_checkpoint=ckpt)
    eval_loss = trainer.evaluate()["eval_loss"] if eval_data else None

    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    meta = {
        "name": cfg.name or out.name, "base": cfg.base, "target": cfg.target,
        "train_file": cfg.train, "train_examples": len(train.examples), "eval_file": cfg.eval_file,
        "config": asdict(cfg), "bf16": bf16, "train_loss_first": losses[0] if losses else None,
        "train_loss_last": losses[-1] if losses else None, "eval_loss": eval_loss,
        "seconds": round(time.time() - t0, 1), "date": time.strftime("%Y-%m-%d"),
    }
    (out / ADAPTER_META).write_text(json.dumps(meta, indent=2))
    (out / "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=1))
    write_card(out, meta)
    return DistillResult(out, len(train.examples), meta["train_loss_first"], meta["train_loss_last"], eval_loss,
                         meta["seconds"], trainer.state.log_history)


def write_card(adapter_dir: Path, meta: dict[str, Any], metrics: dict[str, Any] | None = None,
               baseline: dict[str, Any] | None = None, notes: list[str] | None = None) -> None:
    """The adapter's model card: base, data, training, and evaluation (and the base model's, as the
    baseline) when known; ``notes`` are closing paragraphs."""
    cfg = meta["config"]
    losses = [f"{label} {meta[key]:.3f}" for label, key in
              (("first", "train_loss_first"), ("last", "train_loss_last"), ("eval", "eval_loss"))
              if meta.get(key) is not None]
    lines = [
        f"# {meta['name']}", "",
        "An instag tagger: a LoRA adapter that tags user queries of instruction data with open-set intent tags "
        "(InsTag), distilled from teacher tags.", "",
        "| | |", "|---|---|",
        f"| base model | `{meta['base']}` |",
        f"| answer format | `{meta['target']}` |",
        f"| training data | `{meta['train_file']}` ({meta['train_examples']} examples) |",
        f"| LoRA | r={cfg['r']}, alpha={cfg['alpha']}, dropout={cfg['dropout']}, modules {', '.join(cfg['target_modules'])} |",
        f"| training | {cfg['epochs']} epochs, lr {cfg['lr']}, batch {cfg['batch_size']}x{cfg['grad_accum']}, "
        f"max length {cfg['max_length']}, seed {cfg['seed']} |",
        f"| loss | {', '.join(losses)} |",
        f"| trained | {meta['date']} in {meta['seconds']} s |", "",
        "Use: `instag tag data.jsonl -o tags.jsonl --model <this directory>`.",
    ]
    if metrics:
        gold = metrics.get("gold", "held-out teacher tags")
        lines += ["", "## Evaluation against the teacher (held-out)", "",
                  f"`instag eval` on `{gold}` ({metrics['queries']} queries):", "", metrics_table(metrics)]
    if baseline:
        base = baseline.get("model", meta["base"])
        lines += ["", f"Baseline: the base model `{base}` without the adapter, full InsTag format.", "",
                  metrics_table(baseline)]
    for note in notes or []:
        lines += ["", note]
    (adapter_dir / "README.md").write_text("\n".join(lines) + "\n")


def metrics_table(metrics: dict[str, Any]) -> str:
    rows = ["| level | precision | recall | F1 |", "|---|---|---|---|"]
    for level in ("exact", "rule", "semantic"):
        m = metrics["levels"][level]
        rows.append(f"| {level} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} |")
    rows += ["", f"parse failures {metrics['parse_failure_rate']:.1%}, tags/query {metrics['avg_pred_tags']:.2f} "
             f"(teacher {metrics['avg_gold_tags']:.2f}), {metrics.get('queries_per_s', 0):.2f} queries/s"]
    return "\n".join(rows)

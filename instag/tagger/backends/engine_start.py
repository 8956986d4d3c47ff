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

import contextlib
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
    to ``out_fd`` (or not) and afterwards passes what follows straight through, or drops it
    (``discard``: a failed start's engine dying). :attr:`text` is what was held. The thread ends at the
    pipe's EOF and then closes ``out_fd`` when it owns it."""

    def __init__(self, read_fd: int, out_fd: int, own_out: bool = False):
        self.text = ""
        self.out_fd = out_fd
        self._own_out = own_out
        self._chunks: list[bytes] = []
        self._mode = "hold"  # hold | live | discard
        self._eof = self._closed = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._pump, args=(read_fd,), daemon=True, name="instag-held-output")
        self._thread.start()

    def _pump(self, read_fd: int) -> None:
        try:
            with os.fdopen(read_fd, "rb", buffering=0) as pipe:
                while chunk := pipe.read(65536):
                    with self._lock:
                        if self._mode == "live":
                            self._write(chunk)
                        elif self._mode == "hold":
                            self._chunks.append(chunk)
        finally:
            with self._lock:
                self._eof = True
                if self._mode != "hold":  # released: nothing more to write out
                    self._close_out()

    def _close_out(self) -> None:
        if self._own_out and not self._closed:
            self._closed = True
            with contextlib.suppress(OSError):
                os.close(self.out_fd)

    def _write(self, data: bytes) -> None:
        try:
            os.write(self.out_fd, data)
        except OSError:
            pass

    def release(self, echo: bool, drain: float = 0.0, then: str = "live") -> str:
        """Stop holding: first wait up to ``drain`` seconds for the pipe's EOF (a process that failed may
        still be writing its last words), write the held text out when ``echo``, then pass later output
        through (``then="live"``) or drop it (``"discard"``). Returns the held text."""
        if drain:
            self._thread.join(drain)
        with self._lock:
            held = b"".join(self._chunks)
            self._chunks.clear()
            self.text = held.decode("utf-8", "replace")
            if echo:
                self._write(held)
            self._mode = then
            if self._eof:
                self._close_out()
        return self.text


class StartupLog:
    """Holds what is written to fds 1 and 2 (this process's and its children's: vLLM logs to stdout)
    inside the block.

    On a clean exit the held text is written out and the children's later output flows to the real
    stdout and stderr as it comes. On an exception nothing is shown yet: the caller stops what the
    failed start left running, then calls :meth:`failed`, which waits for the last words, keeps them in
    :attr:`text` (for :func:`failure_cause`), shows them only when ``echo_on_error`` and drops whatever
    comes later. A no-op where the fds cannot be duplicated."""

    FDS = (1, 2)

    def __init__(self, echo_on_error: bool = False):
        self.echo_on_error = echo_on_error
        self.text = ""
        self._saved: dict[int, int] = {}
        self._held: dict[int, HeldOutput] = {}

    def _flush(self) -> None:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError, AttributeError):
                stream.flush()

    def __enter__(self) -> StartupLog:
        self._flush()
        try:
            for fd in self.FDS:
                saved = os.dup(fd)
                self._saved[fd] = saved
                read_fd, write_fd = os.pipe()
                # the reader runs before fd points at the pipe: nothing written there can block unread
                self._held[fd] = HeldOutput(read_fd, saved, own_out=True)
                os.dup2(write_fd, fd)
                os.close(write_fd)
        except BaseException:  # an fd we cannot hold, or Ctrl-C in between: leave every fd as it was
            self._restore()
            for held in self._held.values():
                held.release(echo=True)
            self._held.clear()
            if not isinstance(sys.exc_info()[1], OSError):
                raise
        return self

    def _restore(self) -> None:
        self._flush()
        for fd, saved in self._saved.items():
            with contextlib.suppress(OSError):
                os.dup2(saved, fd)  # this process writes to the real stream again; children keep the pipe
        self._saved.clear()

    def __exit__(self, exc_type, exc, tb) -> None:  # noqa: ANN001
        self._restore()
        if exc_type is None:
            for held in self._held.values():
                held.release(echo=True)
            self._held.clear()

    def failed(self, drain: float = 3.0) -> str:
        """After a failed start (its processes stopped): the held output, shown only when ``echo_on_error``."""
        texts = [held.release(echo=self.echo_on_error, drain=drain, then="discard") for held in self._held.values()]
        self._held.clear()
        self.text = "".join(texts)
        return self.text

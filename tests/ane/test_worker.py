"""The generic worker (anekit.backends.worker) with the reference backend: numerics, live-kernel
rollover, a worker killed or hung mid-run, shared memory unlinked, bindings re-staged."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from multiprocessing.shared_memory import SharedMemory

import numpy as np
import pytest
from ane_programs import conv_program, dynamic_program, rand

from anekit.backends.reference import compile as reference_compile
from anekit.backends.worker import WorkerError, WorkerKernel, WorkerPool, in_worker

START = "forkserver"  # explicit; preloads the reference backend, so each worker starts fast


def shm_exists(name: str) -> bool:
    """Whether a shared-memory name still exists (portable: macOS has no /dev/shm)."""
    try:
        block = SharedMemory(name=name)
    except FileNotFoundError:
        return False
    block.close()
    return True


def process_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def pool():
    p = WorkerPool("reference", max_kernels=10, start_method=START, timeout=30)
    yield p
    p.close()


def call_with_deadline(fn, seconds=30.0):
    """Run fn in a thread; fail (instead of hanging the suite) if it does not return in time."""
    box = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed back to the test
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"call did not return within {seconds} s"
    return box


@pytest.mark.parametrize("numerics, dtype", [("ane", np.float16), ("exact", np.float64)])
def test_worker_gives_the_in_process_results_under_both_numerics(pool, numerics, dtype):
    prog = conv_program(0)
    local = reference_compile(prog, numerics=numerics)
    kernel = pool.compile(prog, numerics=numerics)
    assert isinstance(kernel, WorkerKernel) and kernel.pid != os.getpid() and not in_worker()
    assert kernel.inputs["x"].shape == (1, 32, 1, 32) and kernel.outputs["y"].dtype == "fp16"
    for seed in (1, 2):  # the second run reuses (exact: regrown) shared-memory blocks
        x = rand((1, 32, 1, 32), seed)
        got = kernel(x=x)["y"]
        assert got.dtype == dtype
        np.testing.assert_array_equal(got, local(x=x)["y"])
    names = kernel.shared_memory_names
    assert names and all(shm_exists(n) for n in names)
    kernel.close()
    assert not any(shm_exists(n) for n in names)  # unlinked by the caller


def test_full_workers_roll_over_and_idle_older_workers_exit():
    max_kernels, n = 2, 5
    with WorkerPool("reference", max_kernels=max_kernels, start_method=START, timeout=30) as pool:
        progs = [conv_program(seed) for seed in range(n)]
        kernels = [pool.compile(p) for p in progs]
        pids = [k.pid for k in kernels]
        assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4] and len(set(pids)) == 3
        assert pool.compiles == n
        x = rand((1, 32, 1, 32), 7)
        for k, p in zip(kernels, progs):  # every kernel still answers from its own worker
            np.testing.assert_array_equal(k(x=x)["y"], reference_compile(p)(x=x)["y"])
        first = pids[0]
        kernels[0].close()
        assert first in pool.pids  # still serving kernels[1]
        kernels[1].close()
        assert process_gone(first) and first not in pool.pids  # retired and idle: it exited
        for k in kernels[2:]:
            k.close()
        assert pids[2] not in pool.pids and pids[4] in pool.pids  # the current worker stays
    assert process_gone(pids[4])


def test_worker_killed_mid_run_gives_a_clear_error_then_a_new_worker_takes_over(pool):
    prog = conv_program(0)
    kernel = pool.compile(prog)
    x = rand((1, 32, 1, 32), 3)
    expected = reference_compile(prog)(x=x)["y"]
    np.testing.assert_array_equal(kernel(x=x)["y"], expected)
    old = kernel.pid
    os.kill(old, signal.SIGSTOP)  # freeze it so the next call is surely in flight when it dies
    box = {}
    thread = threading.Thread(target=lambda: box.update(call_with_deadline(lambda: kernel(x=x))), daemon=True)
    thread.start()
    time.sleep(0.3)
    os.kill(old, signal.SIGKILL)
    thread.join(40)
    assert not thread.is_alive()
    err = box.get("error")
    assert isinstance(err, WorkerError), box
    assert "SIGKILL" in str(err) and "next call starts a new worker" in str(err)
    got = call_with_deadline(lambda: kernel(x=x))  # the next call: a new worker, same program
    np.testing.assert_array_equal(got["value"]["y"], expected)
    assert kernel.pid not in (None, old) and kernel.compiles == 2
    names = kernel.shared_memory_names
    kernel.close()
    assert not any(shm_exists(n) for n in names)


def test_hung_worker_times_out_is_killed_and_replaced():
    with WorkerPool("reference", max_kernels=10, start_method=START, timeout=1.0) as pool:
        kernel = pool.compile(conv_program(0))
        x = rand((1, 32, 1, 32), 4)
        kernel(x=x)
        old = kernel.pid
        os.kill(old, signal.SIGSTOP)
        t0 = time.monotonic()
        box = call_with_deadline(lambda: kernel(x=x), 20)
        assert isinstance(box.get("error"), WorkerError) and "within 1 s and was killed" in str(box["error"])
        assert time.monotonic() - t0 < 15
        assert process_gone(old)
        assert call_with_deadline(lambda: kernel(x=x))["value"]["y"].shape == (1, 32, 1, 32)
        assert kernel.pid != old
        kernel.close()


def test_bindings_keep_their_staged_inputs_across_a_worker_death(pool):
    prog = dynamic_program()
    ref = reference_compile(prog)
    kernel = pool.compile(prog)
    layers = [kernel.new_binding() for _ in range(3)]
    weights = [rand((1, 4, 1, 32), 20 + i) for i in range(3)]
    for b, w in zip(layers, weights):
        b.write(w=w)
    x = rand((1, 4, 1, 32), 30)
    for b, w in zip(layers, weights):
        np.testing.assert_array_equal(b.run(x=x)["y"], ref(x=x, w=w)["y"])
    os.kill(kernel.pid, signal.SIGKILL)  # between calls: the next call revives without an error
    assert process_gone(kernel.pid)
    x2 = rand((1, 4, 1, 32), 31)
    for b, w in zip(layers, weights):
        np.testing.assert_array_equal(
            call_with_deadline(lambda b=b: b(x=x2))["value"]["y"], ref(x=x2, w=w)["y"]
        )
    layers[0].close()
    np.testing.assert_array_equal(layers[1](x=x)["y"], ref(x=x, w=weights[1])["y"])
    kernel.close()


def test_worker_errors_arrive_as_themselves(pool):
    with pytest.raises(ValueError, match="numerics must be one of") as info:
        pool.compile(conv_program(0), numerics="bogus")
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "raised in the reference worker" in notes or not hasattr(info.value, "add_note")
    kernel = pool.compile(conv_program(0))  # the worker survives a failed compile
    assert kernel(x=rand((1, 32, 1, 32), 0))["y"].shape == (1, 32, 1, 32)
    kernel.close()


def test_closed_pool_and_kernel_refuse_work():
    pool = WorkerPool("reference", max_kernels=3, start_method=START, timeout=30)
    kernel = pool.compile(conv_program(0))
    pid = kernel.pid
    pool.close()
    assert process_gone(pid)
    with pytest.raises(WorkerError, match="pool is closed"):
        kernel(x=rand((1, 32, 1, 32), 0))
    kernel.close()
    with pytest.raises(RuntimeError, match="closed"):
        kernel(x=rand((1, 32, 1, 32), 0))


def test_pool_arguments_are_checked():
    with pytest.raises(ValueError, match="at least 1"):
        WorkerPool("reference", max_kernels=0)
    with pytest.raises(ValueError, match="never fork"):
        WorkerPool("reference", start_method="fork")
    with pytest.raises(ValueError, match="unknown backend"):
        WorkerPool("gpu")


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_a_script_without_a_main_guard_is_not_run_again_in_the_worker(tmp_path, method):
    script = tmp_path / "train.py"
    script.write_text(
        "import os\n"
        "print('TOP-LEVEL', os.getpid(), flush=True)\n"  # unguarded: must run once, in this process
        "from anekit.backends.worker import WorkerPool\n"
        f"pool = WorkerPool('reference', start_method={method!r}, timeout=60, preload=[])\n"
        "worker = pool._worker_for_compile()\n"
        "print('WORKER', worker.call(('ping',)), flush=True)\n"
        "pool.close()\n"
    )
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split()
    assert out.stdout.count("TOP-LEVEL") == 1, out.stdout
    assert "WORKER" in lines and lines[lines.index("WORKER") + 1] != lines[lines.index("TOP-LEVEL") + 1]


def test_requests_dispatch_through_the_handler_table_and_nothing_is_swallowed(caplog):
    """In-process: every request the caller sends has a handler; an unknown one, or one that fails,
    is an error reply; a close that fails while the worker shuts down is logged, not dropped."""
    from anekit.backends import worker as w

    assert set(w._HANDLERS) == {"exit", "compile", "bind", "write", "run", "close", "ping"}
    state = w._WorkerState("reference")
    assert w._handle(state, ("ping",)) == ("ok", os.getpid())
    kind, exc, text = w._handle(state, ("frobnicate",))
    assert kind == "error" and isinstance(exc, ValueError) and "unknown worker request" in text
    kind, exc, _ = w._handle(state, ("bind", 99))
    assert kind == "error" and isinstance(exc, KeyError)

    class Broken:
        def close(self):
            raise OSError("cannot close")

    state.objects[7] = Broken()
    assert w._handle(state, ("exit",)) == ("ok", None) and not state.running
    with caplog.at_level("WARNING", logger="anekit.worker"):
        state.close()
    assert "closing Broken (id 7) in the worker failed" in caplog.text
    assert "cannot close" in caplog.text

"""Issue 8 §4, worker processes: a worker holds a number of *live* kernels (loaded programs,
ane-private-api.md §10.1), not a number of compiles; forkserver is refused on macOS."""

from __future__ import annotations

import pytest
from ane_programs import conv_program, rand

from anekit.backends import worker as worker_module
from anekit.backends.reference import compile as reference_compile
from anekit.backends.worker import WorkerOptionError, WorkerPool, check_start_method
from anekit.errors import AnekitError

START = "forkserver"  # allowed off macOS; preloads the reference backend


def test_a_worker_with_room_takes_the_next_kernel_instead_of_a_new_process():
    """§10.1: what is limited is programs loaded at once. A worker whose kernels were closed has
    room again, so compiling more never starts a process while a worker has room."""
    with WorkerPool("reference", max_kernels=2, start_method=START, timeout=30) as pool:
        x = rand((1, 32, 1, 32), 1)
        a = pool.compile(conv_program(0))
        b = pool.compile(conv_program(1))
        first = a.pid
        assert b.pid == first
        a.close()
        progs = [conv_program(10 + i) for i in range(6)]
        for p in progs:  # six compiles, at most two live at once: the same worker all along
            k = pool.compile(p)
            assert k.pid == first
            assert (k(x=x)["y"] == reference_compile(p)(x=x)["y"]).all()
            k.close()
        assert pool.compiles == 8 and pool.pids == [first]
        c = pool.compile(conv_program(20))  # b and c: full again
        d = pool.compile(conv_program(21))  # a third live kernel: only now a second worker
        assert c.pid == first and d.pid != first and len(pool.pids) == 2
        for k in (b, c, d):
            k.close()


def test_a_failed_compile_gives_its_slot_back():
    with WorkerPool("reference", max_kernels=1, start_method=START, timeout=30) as pool:
        with pytest.raises(ValueError, match="numerics must be one of"):
            pool.compile(conv_program(0), numerics="bogus")
        k = pool.compile(conv_program(0))  # the slot taken by the failed compile is free again
        assert len(pool.pids) == 1
        k.close()


def test_forkserver_is_refused_on_macos(monkeypatch):
    monkeypatch.setattr(worker_module, "_platform", lambda: "darwin")
    with pytest.raises(WorkerOptionError, match="forkserver' is refused on macOS.*spawn"):
        WorkerPool("reference", start_method="forkserver")
    with pytest.raises(WorkerOptionError, match="forkserver"):
        check_start_method("forkserver")
    assert check_start_method("spawn") == "spawn"
    assert worker_module.default_start_method() == "spawn"
    pool = WorkerPool("reference")  # the default on macOS is spawn, and it is accepted
    assert pool.start_method == "spawn"
    pool.close()
    monkeypatch.setattr(worker_module, "_platform", lambda: "linux")
    assert check_start_method("forkserver") == "forkserver"


def test_the_renamed_option_and_bad_arguments_are_anekit_errors():
    with pytest.raises(WorkerOptionError, match="max_kernels=N"):
        WorkerPool("reference", budget=5)
    for bad in ({"max_kernels": 0}, {"start_method": "fork"}):
        with pytest.raises(AnekitError):
            WorkerPool("reference", **bad)

"""On a machine other work keeps busy, the commands take the cores left free (infer/cpu.py)."""

import os

import torch

from infer import cpu


def test_a_busy_machine_gets_as_many_threads_as_cores_are_free(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    for busy, expected in ((0.0, None), (0.4, None), (1.0, 3), (2.6, 1), (7.0, 1)):
        monkeypatch.setattr(cpu, "others_running", lambda busy=busy: busy)
        chosen = cpu.threads_for_this_machine()
        assert (chosen and chosen[0]) == expected, busy
    monkeypatch.setenv("OMP_NUM_THREADS", "4")  # the user's choice stands, however busy
    assert cpu.threads_for_this_machine() is None


def test_use_free_cores_sets_the_threads_and_says_so_in_one_line(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(cpu, "threads_for_this_machine", lambda: (1, "other work keeps 1.8 of 2 cores busy"))
    try:
        note = cpu.use_free_cores()
        assert torch.get_num_threads() == 1 and note.endswith("using 1 thread (OMP_NUM_THREADS=N to choose)")
    finally:
        torch.set_num_threads(before)


def test_others_running_reads_the_kernels_count_less_this_process():
    """Measured: a number of cores, never negative, no more than the load average says."""
    busy = cpu.others_running(samples=3)
    assert 0.0 <= busy <= max(0.0, os.getloadavg()[0])

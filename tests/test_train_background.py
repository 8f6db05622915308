"""hubclf.train.background: one write at a time in a thread of its own; its error reaches the training thread."""

from __future__ import annotations

import threading

import pytest

from hubclf.train import background
from hubclf.train.background import WRITER_THREAD, BackgroundWrites, fits_in_memory


def test_writes_run_in_their_own_thread_one_at_a_time_in_order():
    writes, done, threads = BackgroundWrites(), [], set()
    release = threading.Event()

    def write(number: int) -> None:
        if number == 0:
            release.wait(timeout=30)  # the first write is slow...
        threads.add(threading.current_thread().name)
        done.append(number)

    writes.submit(lambda: write(0), "first")
    writes.submit(lambda: write(1), "second")  # queued: submit returns while the first is still writing
    assert writes.busy and done == []
    release.set()
    writes.wait()
    assert done == [0, 1] and threads == {WRITER_THREAD} and not writes.busy


def test_a_write_of_a_copy_first_waits_for_the_writes_before_it():
    """copy=True: one copy of the training state in memory at a time."""
    writes, done = BackgroundWrites(), []
    release = threading.Event()
    writes.submit(lambda: (release.wait(timeout=30), done.append(0)), "slow")
    threading.Timer(0.2, release.set).start()
    writes.submit(lambda: done.append(1), "a copy", copy=True)  # returns only once "slow" is written
    assert done[:1] == [0]
    writes.wait()
    assert done == [0, 1]


def test_wait_for_live_waits_for_the_writes_that_read_live_tensors_only():
    writes, done = BackgroundWrites(), []
    live_release, other_release = threading.Event(), threading.Event()
    writes.submit(lambda: (live_release.wait(timeout=30), done.append("tensors")), "tensor files", live=True)
    writes.submit(lambda: (other_release.wait(timeout=30), done.append("rest")), "state and manifest")
    threading.Timer(0.2, live_release.set).start()
    writes.wait_for_live()  # returns once the tensor files are written, while the rest still waits
    assert done == ["tensors"] and writes.busy
    other_release.set()
    writes.wait()
    assert done == ["tensors", "rest"]


def test_a_failed_write_drops_the_writes_queued_behind_it_and_is_raised_once():
    writes, ran = BackgroundWrites(), []
    release = threading.Event()

    def fail() -> None:
        release.wait(timeout=30)
        raise OSError(28, "No space left on device")

    writes.submit(fail, "the tensors of checkpoint step_4", live=True)
    writes.submit(lambda: ran.append("rename"), "checkpoint step_4")  # would complete a checkpoint with no tensors
    release.set()
    with pytest.raises(OSError, match="No space left"):
        writes.wait_for_live()
    assert ran == []  # dropped: nothing completes what failed
    assert writes.what == "the tensors of checkpoint step_4"
    writes.wait()  # raised once: the writer is usable again
    writes.submit(lambda: ran.append(True), "after")
    writes.wait()
    assert ran == [True]
    writes.submit(fail, "again")
    release.set()
    with pytest.raises(OSError, match="No space left"):
        writes.submit(lambda: ran.append(False), "a copy", copy=True)  # a copy waits, so it sees the error
    assert ran == [True]


def test_a_copy_may_take_at_most_half_the_memory_available(monkeypatch):
    monkeypatch.setattr(background, "available_memory", lambda: 8 << 30)
    assert fits_in_memory(4 << 30)
    assert not fits_in_memory((4 << 30) + 1)
    monkeypatch.setattr(background, "available_memory", lambda: 0)  # unknown: nothing is copied
    assert not fits_in_memory(1)

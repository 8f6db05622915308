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
    assert writes.busy and done == []  # submit returned while the write goes on
    release.set()
    writes.submit(lambda: write(1), "second")  # ...and the second starts only once it is done
    writes.wait()
    assert done == [0, 1] and threads == {WRITER_THREAD} and not writes.busy


def test_a_failed_write_is_raised_once_by_the_next_wait_or_submit():
    writes, ran = BackgroundWrites(), []

    def fail() -> None:
        raise OSError(28, "No space left on device")

    writes.submit(fail, "the checkpoint of step 4")
    with pytest.raises(OSError, match="No space left"):
        writes.submit(lambda: ran.append(True), "the next one")
    assert ran == []  # nothing is written after a failure the run has not seen
    assert writes.what == "the checkpoint of step 4"
    writes.wait()  # raised once: the writer is usable again
    writes.submit(lambda: ran.append(True), "after")
    writes.wait()
    assert ran == [True]


def test_a_copy_may_take_at_most_half_the_memory_available(monkeypatch):
    monkeypatch.setattr(background, "available_memory", lambda: 8 << 30)
    assert fits_in_memory(4 << 30)
    assert not fits_in_memory((4 << 30) + 1)
    monkeypatch.setattr(background, "available_memory", lambda: 0)  # unknown: nothing is copied
    assert not fits_in_memory(1)

"""Writes off the training thread: an epoch's checkpoint and ``best/`` are written while the run goes on.

    writes = BackgroundWrites()
    writes.submit(write_tensor_files, "the tensors of step 40", live=True)   # returns at once
    ...                                                                     # evaluation only reads the tensors
    writes.submit(complete_checkpoint, "checkpoint step_40")                 # queued behind it
    writes.wait_for_live()   # before anything changes the tensors again (the next training step)
    writes.wait()            # everything is on disk here, or the first error is raised here

Writes run in order, in one thread (``WRITER_THREAD``). A write reads either a copy of the training state (taken
before ``submit``: ``hubclf.train.checkpoints.cpu_copies``) or, with ``live=True``, the live tensors themselves: then
nothing may change them until ``wait_for_live`` returns, which the training loop calls before its next step. A copy
costs memory (``fits_in_memory`` says whether it may be made, before it is), so a write of a copy first waits for
every write before it: one copy at a time. Each write stays atomic on its own (a temporary folder renamed into
place), so a kill at any instant, in either thread, leaves the last complete checkpoint. After a failed write the
writes queued behind it are dropped (they would complete a checkpoint whose files are missing), and the error is
raised once, by the next ``submit``, ``wait`` or ``wait_for_live``.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable

from hubclf.hardware import available_memory

WRITER_THREAD = "hubclf-writer"  # the thread's name, which fault logs and stack dumps show


class BackgroundWrites:
    """Runs writes in order in a thread of its own (``WRITER_THREAD``); ``wait`` waits for them and raises the error.

        writes = BackgroundWrites()
        writes.submit(lambda: save_files(state_copy), "best/ and the checkpoint of epoch 2", copy=True)
        writes.wait()
    """

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._queue: collections.deque[tuple[Callable[[], None], str, bool]] = collections.deque()
        self._running: tuple[str, bool] | None = None  # what runs now, and whether it reads live tensors
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.what = ""  # the write in progress, or the last one

    def submit(self, write: Callable[[], None], what: str, *, live: bool = False, copy: bool = False) -> None:
        """Queue ``write`` and return (raising the error of an earlier write first). ``live``: it reads tensors that
        training will change, so ``wait_for_live`` waits for it. ``copy``: it writes a copy of the state, and first
        waits for every write before it (one copy in memory at a time)."""
        if copy:
            self.wait()
        with self._lock:
            self._raise_error()
            self._queue.append((write, what, live))
            if self._thread is None:
                # Not a daemon: if the training thread ends first (an error, Ctrl-C), the interpreter still lets the
                # writes finish before the process exits, so a complete checkpoint is never dropped half-written.
                self._thread = threading.Thread(target=self._run, name=WRITER_THREAD)
                self._thread.start()

    @property
    def busy(self) -> bool:
        with self._lock:
            return self._running is not None or bool(self._queue)

    def wait(self) -> None:
        """Return once no write is queued or in progress; raise the error of the write that failed, once."""
        with self._lock:
            self._lock.wait_for(lambda: self._running is None and not self._queue)
            self._raise_error()

    def wait_for_live(self) -> None:
        """Return once no write that reads the live tensors is queued or in progress (the others may go on)."""
        with self._lock:
            self._lock.wait_for(lambda: not (self._running and self._running[1]) and not any(j[2] for j in self._queue))
            self._raise_error()

    def _raise_error(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            raise error

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    self._thread = None
                    self._lock.notify_all()
                    return
                write, self.what, live = self._queue.popleft()
                self._running = (self.what, live)
            try:
                write()
            except BaseException as error:  # noqa: BLE001 (handed to the training thread by wait())
                with self._lock:
                    self._error = error
                    self._queue.clear()  # they would complete what failed
            finally:
                del write  # a copy it wrote is freed as soon as it is written, not at the next save
                with self._lock:
                    self._running = None
                    self._lock.notify_all()


def fits_in_memory(copy_bytes: int) -> bool:
    """Whether a copy of ``copy_bytes`` may be held while it is written: at most half of the memory still available,
    so that the copy never pushes the machine into swap or the OOM killer. Decided from memory, never a timing: it
    changes when files are written, not what they hold.

        fits_in_memory(436 * 2**20)   # AlexNet's weights and SGD momentum, on a machine with GBs to spare: True
    """
    return copy_bytes <= available_memory() // 2

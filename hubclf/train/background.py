"""Writes off the training thread: an epoch's checkpoint and ``best/`` are written while the next epoch trains.

    writes = BackgroundWrites()
    writes.submit(write_checkpoint_files, "the checkpoint of step 40")   # returns at once
    ...
    writes.wait()   # the last write is on disk here, or its error is raised here

One write at a time: ``submit`` first waits for the previous write, and raises its error if it failed, so a slow
disk slows the run down instead of piling up copies of the model in memory. What a write writes is a copy of the
training state taken before ``submit`` (``hubclf.train.checkpoints.cpu_copies``), so the training that goes on
cannot change it; and each write stays atomic on its own (a temporary folder renamed into place), so a kill at any
instant, in either thread, leaves the last complete checkpoint. The copy costs memory, as much as the weights and
optimizer state it holds: ``fits_in_memory`` says whether it may be made, before it is.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from hubclf.hardware import available_memory

WRITER_THREAD = "hubclf-writer"  # the thread's name, which fault logs and stack dumps show


class BackgroundWrites:
    """Runs one write at a time in a thread of its own (``WRITER_THREAD``); ``wait`` joins it and raises its error.

        writes = BackgroundWrites()
        writes.submit(lambda: save_files(copy), "best/ and the checkpoint of epoch 2")
        writes.wait()
    """

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.what = ""  # the write in progress, or the last one

    def submit(self, write: Callable[[], None], what: str) -> None:
        """Wait for the previous write (raising its error), then start ``write`` and return."""
        self.wait()
        self.what = what
        pending = [write]  # popped when it runs: the copy it writes is freed as soon as it is written, not at wait()

        def run() -> None:
            try:
                pending.pop()()
            except BaseException as error:  # noqa: BLE001 (handed to the training thread by wait())
                self._error = error

        # Not a daemon: if the training thread ends first (an error, Ctrl-C), the interpreter still lets the write
        # finish before the process exits, so a complete checkpoint is never dropped half-written.
        self._thread = threading.Thread(target=run, name=WRITER_THREAD)
        self._thread.start()

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait(self) -> None:
        """Return once no write is in progress; raise the error of the write that failed, once."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        error, self._error = self._error, None
        if error is not None:
            raise error


def fits_in_memory(copy_bytes: int) -> bool:
    """Whether a copy of ``copy_bytes`` may be held while it is written: at most half of the memory still available,
    so that the copy never pushes the machine into swap or the OOM killer. Decided from memory, never a timing: it
    changes when files are written, not what they hold.

        fits_in_memory(436 * 2**20)   # AlexNet's weights and SGD momentum, on a machine with GBs to spare: True
    """
    return copy_bytes <= available_memory() // 2

"""What keeps a training run's output folder consistent when things go wrong: one run per folder (``RunLock``),
signals turned into a clean stop in every phase (``StopOnSignal``), and main-process failures raised on every
process (``raise_on_every_process``).

    with RunLock(output_dir), StopOnSignal() as stop:
        ...
        if stop.requested_on_any_process(accelerator): ...
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from hubclf.atomic import fsync_dir, hostname, pid_alive

LOCK_FILE = ".lock"

logger = logging.getLogger(__name__)


class OutputDirLocked(RuntimeError):
    """Another live run holds the output folder."""


class TrainingInterrupted(RuntimeError):
    """Raised after SIGINT/SIGTERM once the run stopped at a safe point; ``checkpoint`` is the newest complete
    checkpoint (``None`` when the run was stopped before its first one)."""

    def __init__(self, checkpoint: Path | None, phase: str = "training") -> None:
        if checkpoint is None:
            message = (
                f"training interrupted during {phase}, before its first checkpoint: nothing to keep. "
                "Rerun the same command (or add --resume latest, which starts over)"
            )
        else:
            message = f"training interrupted during {phase}; state saved in {checkpoint}. Continue with --resume latest"
        super().__init__(message)
        self.checkpoint = checkpoint
        self.phase = phase


class TrainingDiverged(RuntimeError):
    """Raised after ``config.max_nonfinite_steps`` optimizer steps in a row had a NaN/inf loss or gradient."""


class RunLock:
    """An exclusive ``fcntl.flock`` on ``OUTPUT_DIR/.lock``, which also holds the owner's pid, host and start time.

    The kernel drops the flock when its process dies, however it dies (SIGKILL included), so a lock file left by a
    killed run is recognised as stale, named in the log and taken over.

    Example::

        with RunLock("out/run1"):
            ...   # a second `hubclf train --output-dir out/run1` now fails with OutputDirLocked
    """

    def __init__(self, output_dir: str | os.PathLike) -> None:
        self.path = Path(output_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise OutputDirLocked(
                f"{self.path.parent} is in use by another hubclf train ({self._describe_owner()}); "
                "wait for it to finish or use another --output-dir"
            ) from None
        owner = self._read_owner(fd)
        if owner and owner.get("pid") != os.getpid():
            # We hold the flock, so its owner is gone (the kernel released its lock when it died).
            alive = owner.get("host") == hostname() and pid_alive(int(owner.get("pid") or -1))
            logger.warning(
                "taking over the stale lock %s left by a run that ended without releasing it (%s)",
                self.path,
                self._describe(owner) + (", pid reused by another process" if alive else ", process dead"),
            )
        record = {"pid": os.getpid(), "host": hostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        os.fsync(fd)
        fsync_dir(self.path.parent)
        self._fd = fd

    def release(self) -> None:
        """Empty the lock file (a clean exit leaves no owner behind) and drop the flock. The file itself stays:
        removing it would let two runs lock two different files under the same name."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        os.close(self._fd)  # closing drops the flock
        self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.release()

    @staticmethod
    def _read_owner(fd: int) -> dict[str, Any] | None:
        try:
            text = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
            owner = json.loads(text) if text else None
        except (OSError, ValueError):
            return {"pid": -1, "host": "?", "started": "? (unreadable lock file)"}
        return owner if isinstance(owner, dict) else None

    def _describe_owner(self) -> str:
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return "owner unknown"
        try:
            owner = self._read_owner(fd)
        finally:
            os.close(fd)
        return self._describe(owner) if owner else "owner unknown"

    @staticmethod
    def _describe(owner: dict[str, Any]) -> str:
        return f"pid {owner.get('pid')} on {owner.get('host')}, started {owner.get('started')}"


class StopOnSignal:
    """SIGINT/SIGTERM ask the run to stop at the next safe point (after the current optimizer step in training,
    at the end of the current phase elsewhere), keeping the last good state; a second signal aborts at once.

    Example::

        with StopOnSignal() as stop:
            for batch in loader:
                ...
                if stop.requested_on_any_process(accelerator):
                    save_and_stop()
    """

    def __init__(self) -> None:
        self.requested: str | None = None  # the signal's name once one arrived
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():  # Python only delivers signals there
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = signal.Signals(signum).name
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
        print(f"\n{self.requested}: stopping at the next safe point (repeat to abort)", file=sys.stderr)

    def requested_on_any_process(self, accelerator: Any) -> bool:
        """True on every process as soon as one of them got a signal, so that all of them stop together.
        A collective: call it at the same point on every process."""
        if accelerator.num_processes == 1:
            return self.requested is not None
        if self.requested:
            accelerator.set_trigger()
        return accelerator.check_trigger()


def ignore_interrupts_in_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: Ctrl-C reaches the whole process group, and a worker that dies of it would
    crash the main process' next batch instead of letting it stop cleanly. The main process stops the workers."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def raise_on_every_process(accelerator: Any, error: BaseException | None, what: str) -> None:
    """Call on every process after main-process-only work (``error`` is what it raised there, else None): the
    failure is raised on all processes now, instead of leaving the others waiting in their next collective until
    the distributed timeout.

    Example::

        error = None
        if accelerator.is_main_process:
            try: write_files()
            except Exception as e: error = e
        raise_on_every_process(accelerator, error, "writing the metrics")
    """
    if accelerator.num_processes == 1:
        if error is not None:
            raise error
        return
    from accelerate.utils import broadcast_object_list

    message = [None if error is None else f"{type(error).__name__}: {error}"]
    broadcast_object_list(message, from_process=0)
    if error is not None:
        raise error
    if message[0] is not None:
        raise RuntimeError(f"the main process failed while {what}: {message[0]}")


@contextlib.contextmanager
def main_process_work(accelerator: Any, what: str):
    """Run the body on the main process only (``if`` inside is not needed), then fail every process if it failed.

    Example::

        with main_process_work(accelerator, "writing the metrics") as is_main:
            if is_main:
                write_metrics()
    """
    error = None
    try:
        yield accelerator.is_main_process
    except Exception as e:
        if accelerator.num_processes == 1:
            raise
        error = e
    raise_on_every_process(accelerator, error, what)

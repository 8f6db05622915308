"""Test-only fault injection: named points where a test can kill (or fail) hubclf, to prove its writes crash-safe.

    fault_point("checkpoint.after_state")   # does nothing unless HUBCLF_FAULT_POINT names this point

``HUBCLF_FAULT_POINT=NAME:N`` sends SIGKILL to the own process the N-th time (1-based) NAME is reached;
``NAME:N:raise`` raises ``InjectedFault`` there instead (a clean failure, e.g. on one process of a multi-process
run); ``NAME:N:hold`` stops that thread there for good, so that a test can kill the process while the other thread
goes on (a background write held open while the next epoch trains). ``HUBCLF_FAULT_RANK=R`` limits it to the process
whose ``RANK`` environment variable is R. ``HUBCLF_FAULT_LOG=FILE`` appends every point reached to FILE
(``NAME pid thread``), which is how a test lists them.

Never set these outside tests. Unset, a fault point is one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
import threading
import time

_counts: dict[str, int] = {}


class InjectedFault(RuntimeError):
    """The failure ``HUBCLF_FAULT_POINT=NAME:N:raise`` asked for."""


def fault_point(name: str) -> None:
    """Kill or fail here if the test-only ``HUBCLF_FAULT_POINT`` variable names this point (see module doc)."""
    spec = os.environ.get("HUBCLF_FAULT_POINT")
    log = os.environ.get("HUBCLF_FAULT_LOG")
    if not spec and not log:
        return
    rank = os.environ.get("HUBCLF_FAULT_RANK")
    if rank is not None and os.environ.get("RANK", "0") != rank:
        return
    _counts[name] = _counts.get(name, 0) + 1
    if log:
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"{name} {os.getpid()} {threading.current_thread().name}\n")
    if not spec:
        return
    target, _, rest = spec.partition(":")
    count, _, action = rest.partition(":")
    if target != name or _counts[name] != int(count or 1):
        return
    if action == "raise":
        raise InjectedFault(f"injected fault at {name} (hit {_counts[name]})")
    if action == "hold":
        while True:  # until the test kills the process
            time.sleep(3600)
    os.kill(os.getpid(), signal.SIGKILL)

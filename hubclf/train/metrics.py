"""Moved to :mod:`hubclf.metrics` (inference uses it too); this module re-exports it for one release."""

from hubclf.metrics import *  # noqa: F403
from hubclf.metrics import __all__  # noqa: F401

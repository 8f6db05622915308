"""Moved to :mod:`hubclf.hardware` (inference uses it too); this module re-exports it for one release."""

from hubclf.hardware import *  # noqa: F403
from hubclf.hardware import __all__  # noqa: F401

"""Register hubclf's architectures with timm the moment timm is imported, without importing timm (or torch) first.

``import hubclf`` has to be cheap: the command line imports the package before it parses a single flag, and
``import torch, timm`` takes seconds on a small machine. So ``import hubclf`` only installs this hook when timm is not
imported yet; ``import timm`` (by the user, by hubclf's own modules, by transformers) then runs timm's module as
usual and imports ``hubclf.models`` right after it, which registers ``hubclf_alexnet`` and the others.

    import hubclf, timm
    timm.create_model("hubclf_alexnet_slim", num_classes=8)   # registered by the hook when timm was imported
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from types import ModuleType


def _register() -> None:
    """Import ``hubclf.models`` (which registers the architectures); a failure must never break ``import timm``."""
    try:
        importlib.import_module("hubclf.models")
    except Exception as e:  # noqa: BLE001 - the user's `import timm` must still work; say why ours did not
        warnings.warn(f"hubclf could not register its timm architectures: {type(e).__name__}: {e}", stacklevel=2)


class _RegisterAfterTimm(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """A finder for the module ``timm`` alone: it lets the real finder locate timm, then wraps its loader."""

    def find_spec(self, fullname: str, path=None, target=None):  # noqa: ANN001 - importlib's signature
        if fullname != "timm":
            return None
        sys.meta_path.remove(self)  # one shot; and importlib.util.find_spec below must not find us again
        spec = importlib.util.find_spec("timm")
        if spec is None or spec.loader is None:
            return spec
        self._loader = spec.loader
        spec.loader = self
        return spec

    def create_module(self, spec):  # noqa: ANN001
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        _register()


def install() -> None:
    """Make ``import timm`` register hubclf's architectures (at once, when timm is already imported). Idempotent.

        install(); import timm; "hubclf_alexnet" in timm.list_models("hubclf_*")   # True
    """
    if "timm" in sys.modules:
        _register()
    elif not any(isinstance(finder, _RegisterAfterTimm) for finder in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterTimm())

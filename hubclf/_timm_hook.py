"""Register hubclf's architectures with timm the moment timm is imported, without importing timm (or torch) first.

``import hubclf`` has to be cheap: the command line imports the package before it parses a single flag, and
``import torch, timm`` takes seconds on a small machine. So ``import hubclf`` only calls ``install()``: when timm is
already imported the architectures are registered at once; otherwise a finder first on ``sys.meta_path`` answers for
``timm`` alone, lets the other finders locate it, and imports ``hubclf.models`` (which registers ``hubclf_*``) right
after timm's ``__init__`` has run. It imports only ``sys``; a failing registration is a warning, never a broken
``import timm``.

    import hubclf, timm
    timm.create_model("hubclf_alexnet_slim", num_classes=8)   # registered by the hook when timm was imported

(No ``.pth`` file installs this hook at interpreter start: docs/publish.md, "Loading without hubclf", says why.)
"""

import sys


def install() -> None:
    """Idempotent. If timm is already imported, registers hubclf's architectures at once."""
    if "timm" in sys.modules:
        _register()
    elif not any(isinstance(finder, _TimmFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _TimmFinder())


def _register() -> None:
    try:
        import hubclf.models  # noqa: F401  (registers hubclf_* with timm; a no-op once imported)
    except Exception as e:  # never break `import timm` for hubclf's sake
        import warnings

        warnings.warn(f"hubclf could not register its models with timm: {e!r}", stacklevel=2)


class _TimmFinder:  # importlib's finder protocol (no annotations: `typing` costs milliseconds at start-up)
    def find_spec(self, name, path=None, target=None):
        if name != "timm":
            return None
        sys.meta_path.remove(self)  # one shot: timm is imported once per process
        for finder in sys.meta_path:
            spec = finder.find_spec(name, path, target) if hasattr(finder, "find_spec") else None
            if spec is not None:
                if hasattr(spec.loader, "exec_module"):
                    spec.loader = _RegisterAfter(spec.loader)
                return spec
        return None


class _RegisterAfter:
    """timm's own loader (every attribute passes through), plus ``_register()`` once timm's ``__init__`` has run."""

    def __init__(self, loader) -> None:
        self.loader = loader

    def __getattr__(self, name: str):
        return getattr(self.loader, name)

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        self.loader.exec_module(module)
        _register()

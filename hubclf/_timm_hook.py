"""Register hubclf's architectures with timm whenever timm is imported, without ``import hubclf``.

``install()`` puts a finder first on ``sys.meta_path`` that answers only for ``timm``: the other finders locate it,
and right after timm's ``__init__`` has run, ``hubclf.models`` is imported (registering ``hubclf_*``). It imports
only ``sys`` and ``os``; a failing registration is a warning, never a broken ``import timm``.

    import hubclf._timm_hook; hubclf._timm_hook.install()   # HUBCLF_NO_TIMM_HOOK=1 turns it off
    import timm; timm.create_model("hubclf_alexnet_slim")   # no `import hubclf`
"""

import os
import sys

OPT_OUT = "HUBCLF_NO_TIMM_HOOK"


def install() -> None:
    """Idempotent. If timm is already imported, registers hubclf's architectures at once."""
    if os.environ.get(OPT_OUT, "") not in ("", "0") or any(isinstance(f, _TimmFinder) for f in sys.meta_path):
        return
    if "timm" in sys.modules:
        _register()
    else:
        sys.meta_path.insert(0, _TimmFinder())


def _register() -> None:
    try:
        import hubclf.models  # noqa: F401  (registers hubclf_* with timm; a no-op once imported)
    except Exception as e:  # never break `import timm` for hubclf's sake
        import warnings

        warnings.warn(f"hubclf could not register its models with timm: {e!r} (set {OPT_OUT}=1 to skip)", stacklevel=2)


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

"""hubclf's version, importable without importing anything else of hubclf (or torch)."""

__version__ = "0.1.0"

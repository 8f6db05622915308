"""pytest fixtures for the local Hub (placeholder, filled in by the Hub test-server work)."""

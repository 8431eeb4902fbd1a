"""Offline stand-ins for t5-small and IMDb (tiny assets) and the smoke test."""

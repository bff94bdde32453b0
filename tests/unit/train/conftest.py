"""Fixtures of the train tests live in tests/conftest.py (the integration tests share them)."""

"""Implementations of the ``atp`` commands (one module each)."""

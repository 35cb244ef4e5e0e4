"""ATP — Agent Transport Protocol: a streaming protocol and router for AI work."""

__version__ = "0.1.0"

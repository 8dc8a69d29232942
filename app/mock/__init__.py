"""The embedded mock model server: every protocol the relay speaks, with fault injection (server.py)."""

from __future__ import annotations

from app.mock.server import FAULTS, MODELS, MockModel, decode_request, mock_text, prompt_of

__all__ = ["FAULTS", "MODELS", "MockModel", "decode_request", "mock_text", "prompt_of"]

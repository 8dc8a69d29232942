"""Token Relay: relays LLM token streams from model servers to clients as Server-Sent Events."""

__version__ = "0.1.0"

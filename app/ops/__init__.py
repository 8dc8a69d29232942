"""Operations: what the relay's operators see and set, observing the core from outside its per-event path."""

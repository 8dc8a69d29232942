"""Client dialects: each decodes one client API into a ``GenerationRequest`` and encodes normalised events back into it."""

"""The relay core: normalised events, upstream generations, and the client-facing streams."""

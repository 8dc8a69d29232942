"""Client dialects, one module per client API: each decodes its requests and encodes normalised events, and nothing else."""

"""The graph engine: run a loaded graph offline (offline) or chunk by chunk (streaming), on set threads."""

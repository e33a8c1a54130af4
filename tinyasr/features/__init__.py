"""Features: the NeMo-compatible log-mel / MFCC front end, offline (frontend) and chunk by chunk (streaming)."""

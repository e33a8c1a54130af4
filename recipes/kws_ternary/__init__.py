"""Keyword classifier on FSDD digits, dense vs regenerated ternary 1x1 convs (see README.md)."""

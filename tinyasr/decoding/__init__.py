"""Model outputs to results: CTC (ctc), classification (classification), shared score handling (scores)."""

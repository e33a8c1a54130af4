"""Audio in: files and arrays to float32 mono samples (io), at the model's rate (resample)."""

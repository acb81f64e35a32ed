"""Data: dataset manifests and their splits, read into samples (samplers live in calibrators/)."""

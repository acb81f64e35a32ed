"""Quantization: structural roles, Q/DQ placement and scale checks, FP16 conversion, ORT baselines."""

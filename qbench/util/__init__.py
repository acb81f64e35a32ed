"""Small helpers every stage uses: atomic file writes, quiet loggers, progress output."""

"""The run folder: artifact names, atomic writes, status, loading a run's model."""

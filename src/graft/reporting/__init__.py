"""Reading a run folder: evaluation, drift, plots, the report, export and predict."""

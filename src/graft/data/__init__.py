"""Data in: sources (folders, CSV manifests), the pre-flight check, pipelines."""

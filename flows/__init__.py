"""Prefect flows for lmmops: thin wiring over `lmmops.stages.run_stage` (see stages.py, pipeline.py)."""

"""Prefect wiring only: flows and deployments' entry points call ``pipeline`` functions."""

"""The stages, as plain Python: ingest, features, tables, batches, train, evaluate.

Each stage module exposes a ``run_<stage>(cfg, ...)`` function that takes a validated config, reads
only its declared upstream artifacts, writes one content-addressed artifact and returns a small
JSON-serialisable summary dict (always with ``stage``, ``cache_hit``, ``seconds``, ``key``, ``path``).
``flows/`` wires these into Prefect; ``flows.cli`` is a thin CLI over them.
"""

"""The ``subsample`` commands, registered in order on :data:`flows.cli.app`: ``common`` (what they
share: ``--json``, ``--set``, ``--dry-run``, :func:`~flows.commands.common.emit`), ``stages``
(ingest, features, tables, batches), ``train`` (train, presets, evaluate) and ``runs`` (run, demo,
compare, compare-report: the Prefect flows). Only the CLI imports them."""

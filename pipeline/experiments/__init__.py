"""Experiments over many training runs: the strategy comparison's grid (``compare``) and its
report, read back from MLflow (``stats``: the numbers; ``summary``: their sentences; ``plots``;
``report``: the documents)."""

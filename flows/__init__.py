"""The top layer: the Prefect flows and deployments' entry points (``train_subsample``,
``compare``), the one config resolution every command uses (``config``), the temporary Prefect
server (``local_server``) and, above them all, the ``subsample`` command line (``cli``)."""

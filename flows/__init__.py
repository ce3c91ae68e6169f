"""The top layer: the Prefect flows and deployments' entry points (``train_subsample``,
``compare``), the run config (``config``) and the one resolution of it every command uses
(``resolve``, with ``checks`` and ``machine``), the temporary Prefect server (``local_server``)
and, above them all, the ``subsample`` command line (``cli``, its commands in ``commands``)."""

import os as _os

# Telemetry off unless the user turned it on: Prefect's temporary server posts usage heartbeats
# (and logs "ERROR ... Failed to send telemetry" where there is no internet), MLflow's client and
# UI send usage records. Set here, before either is imported by any command, flow or deployment.
_os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
_os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

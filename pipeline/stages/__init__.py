"""The stages, one module each: ingest, features, tables, batches, train, evaluate. A stage reads
only the artifacts it consumes and writes one content-addressed artifact under ``$SUBSAMPLE_HOME``;
``flows.train_subsample`` chains them and ``flows.cli`` runs any one alone."""

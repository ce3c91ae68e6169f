"""Everything that knows about on-disk layouts: the dataset zarr store, stage artifacts and their
content-addressed keys, and the MLflow tracking location. All of it lives under ``$SUBSAMPLE_HOME``."""

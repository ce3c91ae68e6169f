"""The pipeline as plain Python, in layers; a module imports its own layer or those below, never
above (``tests/test_layers.py`` checks it):

``pipeline.stages``       the six stages (ingest, features, tables, batches, train, evaluate): each
                          writes one content-addressed artifact under ``$SUBSAMPLE_HOME``
``pipeline.experiments``  above the stages: the strategy comparison and its report
``pipeline.data``         what the stages read and draw: image policy and decoders, source readers,
                          batch strategies and the sampler
``pipeline.presets``, ``pipeline.floors``, ``pipeline.fidelity``, ``pipeline.extractor_weights``
                          training presets; the feature KL's floors; IS/FID/KID and the metrics'
                          computation; the feature extractor's weights, loaded as hostile files
``pipeline.config``       the stages' typed configs
``pipeline.gan``          the GAN library: models, losses, methods, the trainer, DDP collectives
``pipeline.registry``, ``pipeline.metrics``, ``pipeline.pictures``
                          the one registry type; the metric names and pure numpy measures; titled
                          image grids

Below them sit ``kernels`` (numba kernels with numpy references) and ``storage`` (stores, artifact
keys, locks, MLflow); above them ``flows`` (the Prefect flows and, on top, the ``subsample`` CLI in
``flows.cli``).
"""

"""The test suite as a package: test modules import the shared helpers as ``tests.<module>`` (``model_fixtures``,
``pipeline_fixtures``, ``batch_fixtures``, ``videos``); pytest puts the repository root on ``sys.path``."""

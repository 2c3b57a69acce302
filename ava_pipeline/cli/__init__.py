"""Console entry points: ``ava-detect`` (detect.py) and ``ava-eval`` (evaluate.py)."""

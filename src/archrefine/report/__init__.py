"""What a researcher opens or tracks after a run: the self-contained report.html and experiment
tracking (MLflow). Reads finished run directories of every kind, so it sits above `real` and
`experiments` and below `cli`.
Layer: may import real, experiments, sim, code, sandbox, space and core; only cli imports it.
"""

"""Core layer: configuration, schedules, metrics and kNN, analysis, plots, run directories.

May import only the standard library and third-party packages: everything else builds on it.
"""

"""Compatibility re-exports: the sandbox moved to `archrefine.sandbox` (issue 12).

May import only the sandbox layer; new code imports `archrefine.sandbox.sandbox` directly.
"""

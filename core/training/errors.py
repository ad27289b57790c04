"""Errors in what a user gave us (spec, data, model reference), as opposed to bugs.

`TrainingInputError` is a `ValueError` whose message names the field or row to fix; the CLI
prints it on one line and the worker marks the job failed with it, without a traceback.
"""

from __future__ import annotations


class TrainingInputError(ValueError):
    """Bad user input: a missing column, an unusable model or chat template, a bad setting."""


class TrainingOutOfMemory(TrainingInputError):
    """Training ran out of GPU memory even with the smallest plan the OOM retry could make:
    the job's settings ask for more than the GPU holds. The message says what to lower."""

"""The errors a user can cause and fix: each becomes one clear line and exit status 1."""

from __future__ import annotations


class PipelineError(Exception):
    """An error the user can fix: bad params, bad data, an unreachable service."""


class ParamsError(PipelineError):
    """A value in params.yaml is missing, unknown or invalid."""

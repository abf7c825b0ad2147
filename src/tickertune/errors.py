"""Errors a user can act on. Each carries one line of text and an exit code."""

from __future__ import annotations


class TickertuneError(Exception):
    """An error caused by the user's input or environment, reported as one line."""

    exit_code = 2


class DataError(TickertuneError):
    """The price data is missing, malformed or too short."""


class ConfigError(TickertuneError):
    """A setting (CLI flag, URL, study mode) is invalid or conflicts with stored state."""


class NotFoundError(TickertuneError):
    """Something the user asked about does not exist yet (no study, no results file)."""

    exit_code = 1

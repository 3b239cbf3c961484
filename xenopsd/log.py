"""Structured logging: one structlog configuration for every program.

Loggers are `structlog.get_logger(__name__)`; request handlers bind `dbg`
(the log part of the caller's debug_info) and `task` so every line of one
operation can be found with one grep.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog


class _Stderr:
    """Whatever `sys.stderr` is when a line is written, not when logging was set up:
    loggers are cached, and callers (tests, the CLI) may swap stderr later."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure(level: str = "info", json: bool = False) -> None:
    """Log key=value lines (or JSON) to stderr, which systemd sends to the journal."""
    logging.basicConfig(stream=sys.stderr, level=level.upper(), format="%(message)s")
    renderer: Any = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(_Stderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )


def get(name: str) -> Any:
    return structlog.get_logger(name)

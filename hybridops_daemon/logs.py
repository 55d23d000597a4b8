"""structlog set-up: a pipeline of small processors; redaction sits in it, before any renderer."""

from __future__ import annotations

import logging
import sys

import structlog

from hybridops_daemon.journal.redact import Redactor


def configure(redactor: Redactor, *, level: int = logging.INFO, pretty: bool | None = None) -> None:
    """JSON lines on stderr for journald, or pretty output on a terminal."""
    if pretty is None:
        pretty = sys.stderr.isatty()
    renderer: structlog.types.Processor = (
        structlog.dev.ConsoleRenderer() if pretty else structlog.processors.JSONRenderer(sort_keys=True)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redactor.processor(),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )

"""Builds the source a config entry describes, from the declarations in ``config.sources``.

A source's module is imported only when a config entry of its type is built: a node without BGP never loads the
BGP code (nor vici, prometheus_api_client or the MQTT client unless a source of that type is configured).
"""

from __future__ import annotations

import importlib
from typing import Any

from hybridops_daemon.config.sources import SOURCES_BY_TYPE, SourceDeclaration, SourceSpec
from hybridops_daemon.signals.base import Source, SourceContext


def source_class(declaration: SourceDeclaration) -> type[Any]:
    """The class ``declaration.factory`` names (``module:Class``), imported now."""
    module, _, name = declaration.factory.partition(":")
    cls = getattr(importlib.import_module(module), name)
    assert isinstance(cls, type), f"{declaration.factory} is not a class"
    return cls


def build_source(spec: SourceSpec, context: SourceContext) -> Source:
    declaration = SOURCES_BY_TYPE.get(spec.type)
    if declaration is None:
        raise ValueError(f"unknown source type {spec.type!r} (declared: {', '.join(SOURCES_BY_TYPE)})")
    if not isinstance(spec, declaration.config):
        raise TypeError(f"a {spec.type!r} source is configured by {declaration.config.__name__}, not {type(spec).__name__}")
    source: Source = source_class(declaration).from_context(spec, context)
    return source

"""Builds the source a config entry describes. Imports lazily: a node without BGP never loads the BGP code."""

from __future__ import annotations

import time
from collections.abc import Callable

from hybridops_daemon.config.models import HttpProbeSource, PeerSource
from hybridops_daemon.config.models import Source as SourceConfig
from hybridops_daemon.signals.base import Source


def build_source(spec: SourceConfig, node: str, clock: Callable[[], float] = time.time) -> Source:
    """The ``peer`` source is not built here: it needs the daemon's own observations (see daemon.py)."""
    if isinstance(spec, HttpProbeSource):
        from hybridops_daemon.signals.http_probe import HttpProbe

        return HttpProbe(spec, node, clock)
    if isinstance(spec, PeerSource):
        raise ValueError("the peer source is wired by the daemon, not the registry")
    if spec.type == "mqtt":
        from hybridops_daemon.signals.mqtt import MqttIngest

        return MqttIngest(spec, node, node, clock)
    if spec.type == "prometheus":
        from hybridops_daemon.signals.prometheus import PrometheusPoller

        return PrometheusPoller(spec, node, clock)
    if spec.type == "alertmanager":
        from hybridops_daemon.signals.alertmanager import AlertmanagerReceiver

        return AlertmanagerReceiver(spec, node, clock)
    if spec.type == "bgp":
        from hybridops_daemon.signals.bgp import BgpPoller

        return BgpPoller(spec, node, clock)
    from hybridops_daemon.signals.ipsec import IpsecPoller

    return IpsecPoller(spec, node, clock)

"""The observation store: the latest sample per (signal, edge), and the counters the policy and operators need."""

from __future__ import annotations

from collections import Counter
from types import MappingProxyType

from hybridops_daemon.signals.sample import Sample


class ObservationStore:
    def __init__(self) -> None:
        self._latest: dict[tuple[str, str], Sample] = {}
        self.received: Counter[str] = Counter()  # samples per signal
        self.out_of_order: Counter[str] = Counter()

    def put(self, sample: Sample) -> bool:
        """Keep ``sample`` unless a newer one is already held (sources may deliver late). True if kept."""
        key = (sample.signal, sample.edge)
        held = self._latest.get(key)
        self.received[sample.signal] += 1
        if held is not None and held.observed_at > sample.observed_at:
            self.out_of_order[sample.signal] += 1
            return False
        self._latest[key] = sample
        return True

    def snapshot(self) -> MappingProxyType[tuple[str, str], Sample]:
        """A read-only copy: decide() must not see the store change under it."""
        return MappingProxyType(dict(self._latest))

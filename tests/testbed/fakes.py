"""Testbed fixtures: fakes (filled in by the drivers work)."""


# --- gcp ---
# A fresh Compute Engine fake per test (it starts in milliseconds), so no test sees another's operations or faults.

import collections.abc as _gcp_abc

import pytest as _gcp_pytest

from tests.fakes.gcp_compute import GcpComputeFake


@_gcp_pytest.fixture
def gcp_fake() -> _gcp_abc.Iterator[GcpComputeFake]:
    """The GCP Compute fake on a free loopback port: project ``dr-project``, zone ``europe-west3-a``, instances
    ``cloud-standby`` and ``drill-standby`` TERMINATED. ``.endpoint`` is the SDK's ``api_endpoint``."""
    fake = GcpComputeFake("dr-project", "europe-west3-a", {"cloud-standby": "TERMINATED", "drill-standby": "TERMINATED"}).start()
    try:
        yield fake
    finally:
        fake.stop()


# --- hcloud ---
# A fresh Hetzner Cloud API fake per test (it starts in milliseconds), so no test sees another's state, faults or counts.

import collections.abc as _hcloud_abc  # noqa: E402 - a self-contained block

import pytest as _hcloud_pytest  # noqa: E402

from tests.fakes.hcloud_api import HcloudFake  # noqa: E402


@_hcloud_pytest.fixture
def hcloud_fake() -> _hcloud_abc.Iterator[HcloudFake]:
    """The Hetzner Cloud API fake on a free loopback port: servers edge01 and edge02, floating IP 203.0.113.10
    assigned to edge01. ``.endpoint`` ("http://127.0.0.1:PORT/v1") and ``.token`` are what ``hcloud.Client`` takes;
    faults, tampering and call counts are its methods (or ``/_fake/*`` over HTTP)."""
    fake = HcloudFake().start()
    try:
        yield fake
    finally:
        fake.stop()

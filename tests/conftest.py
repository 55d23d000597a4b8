"""Registers the testbed's component fixtures (tests/testbed/) for every test."""

pytest_plugins = [
    "tests.testbed.mosquitto",
    "tests.testbed.prometheus",
    "tests.testbed.alertmanager",
    "tests.testbed.netns",
    "tests.testbed.frr",
    "tests.testbed.bird",
    "tests.testbed.strongswan",
    "tests.testbed.postgres",
    "tests.testbed.powerdns",
    "tests.testbed.netbox",
    "tests.testbed.fakes",
    "tests.testbed.etcd",
    "tests.testbed.edgenet",
]

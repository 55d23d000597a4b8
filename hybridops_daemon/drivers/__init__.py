"""Drivers: what changes the outside world, one module per driver, declared in ``declarations/``."""

# The config models of the drivers build on config.models, whose LaneDrivers is built from the drivers'
# declarations: loading config.models first lets either side be imported first (see config/models.py).
import hybridops_daemon.config.models  # noqa: F401

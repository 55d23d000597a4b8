"""Drivers: what changes the outside world, one module per driver, declared in ``declarations/``."""

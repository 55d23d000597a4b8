"""hybridops-daemon: the DR decision daemon for a hybrid WAN edge pair."""

__version__ = "0.1.0"

"""Direct notification: the daemon's own alerts (``alerts``) and their delivery to Alertmanager (``alertmanager``)."""

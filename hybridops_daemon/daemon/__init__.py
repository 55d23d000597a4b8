"""The daemon, as rooms wired by ``app``:

- ``app``: builds and wires everything, owns every task in one TaskGroup, starts and stops in order;
- ``lifecycle``: signals that only set flags; the systemd watchdog fed by the decision loop's progress;
- ``lane``: a lane as the daemon holds it; the typed ``Handover`` and ``RunProgress`` a successor adopts;
- ``takeover``: campaign per lane, take it over (from the handover or this node's journal), release, publish;
- ``decisions``: the decision loop (the one caller of decide() and starter of chains) and intent submission;
- ``burst``: what the loop hands a burst lane's decision and records beside it; its figures for status and metrics;
- ``inbox``: what wakes the loop (chain ends, intents, samples, signals);
- ``chains``: each run as a task; its end back to the loop; drain on shutdown;
- ``sources``: each source for the daemon's lifetime, restarted with backoff if it crashes;
- ``housekeeping``: journal retention, scheduled drills, profile reload.

The control backend lives beside the control server (``hybridops_daemon.control.backend``).
"""

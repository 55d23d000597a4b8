"""The read-only journal view in a browser: ``server.py`` (aiohttp, security), ``pages.py`` (handlers),
``views.py`` (what a page shows), ``queries.py`` (the timeline), ``templates/`` and ``static/``."""

"""``tinyasr serve``: live recognition over WebSocket, with a browser page (the ``serve`` extra: websockets).

Data path: ``server`` (connections, limits, the page) -> ``session`` (one OnlineStream per connection,
run in a bounded worker pool) -> JSON events defined in ``protocol``.  ``client`` is a small Python client;
``cli`` holds the command's options and imports nothing heavy.  Protocol and limits: docs/serve.md.
"""

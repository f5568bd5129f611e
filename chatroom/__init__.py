"""Everything the Go server never had, one module per concern.

``server.py`` keeps the socketserver-shaped lifecycle and the Go functions,
in the Go file's order; it calls into this package for the machinery:

    config      the settings (:class:`~chatroom.config.Config`): defaults, ranges,
                the command line and environment variables generated from them
    process     what belongs to the whole process: CPU pinning, the open-file
                limit, the GIL switch interval, the stop signals' watchdog
    connection  one chat client: its socket, state, send lock and send path,
                flood control, the replies that go straight to its socket
    redisdb     the Redis adapter: connecting, key names, the Lua scripts beside
                the functions that call them, the reader's MULTI/EXEC batch, and
                the only code that touches redis-py's internals
    listener    the pub/sub listener engine behind ``broadcast`` and
                ``personal_message``: draining, lingering, resubscribing
    cluster     several processes on one Redis: heartbeats, reaping the dead,
                reconciling after an outage, and Redis health notices
    history     the public messages kept for newcomers
    metrics     Prometheus metrics, /healthz and /readyz

Imports flow one way: ``framing`` and ``protocol`` import nothing of the
project; this package imports them and itself, never ``server`` or
``client``; modules here are handed what they need (callables, the config)
rather than the whole server.
"""

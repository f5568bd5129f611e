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
    accounts    registered names: register, login, password, unregister, the
                argon2id hashing pool, login throttling, taking a name back
    moderation  operators' kick, ban, mute and announce; the bans and mutes
                every process keeps in memory; the moderation log
    control     the control channel: how an action reaches the users of
                every process (one listener thread per process)
    tls         the TLS listener's certificate and handshake, and TlsStream,
                one TLS connection that several threads share safely
    admin       the admin command line (``chatroom-admin``)
    client_identity  the client's side of accounts, moderation and TLS
    websocket   the browsers' front door: the page (static/) at /, the chat at /ws
    metrics     Prometheus metrics, /healthz and /readyz

Imports flow one way: ``framing`` and ``protocol`` import nothing of the
project; this package imports them and itself, never ``server`` or
``client``; modules here are handed what they need (callables, the config)
rather than the whole server.
"""

"""The load tester: many concurrent SSE token streams, each one judged by how it ended.

``target`` builds the request for a URL (our native API, OpenAI chat or completions, any
EventSource URL), ``stream`` reads one response on a raw asyncio Protocol and classifies
it, ``runner`` opens the streams (ramp, count or duration, timeouts), ``stats`` and
``histogram`` turn the records into figures, ``report`` and ``plot`` show them, and
``cli`` is ``token-relay loadtest``.
"""

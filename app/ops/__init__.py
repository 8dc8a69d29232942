"""Operations: what the relay tells its operators (metrics, request logs, usage), observed through one seam.

``RequestRecord`` (record.py) is that seam: the routes fill it with what they know (dialect,
key, model, status), the relay core with what it knows (the generation's upstream, attempts,
first-token time, terminal event, usage), and ``Operations.end`` hands the finished record to
every observer once: the key limits' debits (limits.py), the metrics, the request log. Keys
(keys.py) are found by the middleware and wait in the scope. Nothing here runs per event: the
generation's own counters are read at the end.
"""

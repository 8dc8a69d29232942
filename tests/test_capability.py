"""Capabilities: signed, expiring tokens for one action on one stream."""

from __future__ import annotations

import time

from app.capability import CANCEL, READ, Capabilities


def test_a_token_allows_its_action_on_its_stream_until_it_expires() -> None:
    capabilities = Capabilities(b"k" * 32, ttl=60)
    now = time.time()
    token, expires = capabilities.issue("st_a", READ, now=now)
    assert expires == int(now + 60)
    assert capabilities.check(token, "st_a", READ, now=now)
    assert capabilities.check(token, "st_a", READ, now=expires)
    assert not capabilities.check(token, "st_a", READ, now=expires + 1)
    assert not capabilities.check(token, "st_b", READ, now=now)
    assert not capabilities.check(token, "st_a", CANCEL, now=now)


def test_tampered_or_foreign_tokens_are_refused() -> None:
    capabilities = Capabilities(b"k" * 32, ttl=60)
    token, expires = capabilities.issue("st_a", READ)
    signature = token.split(".")[1]
    assert not capabilities.check(f"{expires + 3600}.{signature}", "st_a", READ)  # a later expiry, same signature
    assert not capabilities.check(Capabilities(b"j" * 32, ttl=60).issue("st_a", READ)[0], "st_a", READ)
    for junk in ["", ".", "abc", "123", f"{expires}.", f"x{expires}.{signature}", "é.é"]:
        assert not capabilities.check(junk, "st_a", READ)

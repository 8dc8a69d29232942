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


def test_only_the_canonical_spelling_of_a_valid_token_is_accepted() -> None:
    """A token has one spelling: the expiry in plain decimal, a dot, 43 base64url characters."""
    capabilities = Capabilities(b"k" * 32, ttl=60)
    token, expires = capabilities.issue("st_a", READ)
    signature = token.split(".")[1]
    assert len(signature) == 43 and capabilities.check(token, "st_a", READ)
    standard_base64 = signature.replace("-", "+").replace("_", "/")
    for spelling in [
        f"0{expires}.{signature}", f"00{expires}.{signature}", f"+{expires}.{signature}", f"-{expires}.{signature}",
        f" {expires}.{signature}", f"{expires} .{signature}", f"{expires}. {signature}", f"{expires}.{signature} ", f"{expires}.{signature}\n",
        f"{expires}.{signature}=", f"{expires}.{signature}==", f"{expires}.{signature[:-1]}", f"{expires}.{signature}A",
        f"{expires}..{signature}", f"{expires}.{signature}.", f"{expires}.{signature}.{signature}",
        f"{expires}%2E{signature}", f"{expires}.{signature[:-1]}%{ord(signature[-1]):02X}", f"{expires:_}.{signature}",
        f"{expires}.0x{signature}", f"{_arabic_indic(expires)}.{signature}", f"{expires}.{signature[:-1]}\u00e9", f"{expires}\x00.{signature}",
    ]:
        assert not capabilities.check(spelling, "st_a", READ), spelling
    if standard_base64 != signature:
        assert not capabilities.check(f"{expires}.{standard_base64}", "st_a", READ)


def test_an_expiry_of_more_than_twelve_digits_is_refused_before_any_arithmetic() -> None:
    capabilities = Capabilities(b"k" * 32, ttl=60)
    assert not capabilities.check("9" * 13 + "." + "A" * 43, "st_a", READ, now=0)
    assert not capabilities.check("9" * 5000 + "." + "A" * 43, "st_a", READ, now=0)


def _arabic_indic(number: int) -> str:
    """The same number in digits that ``str.isdigit`` and ``int`` accept."""
    return "".join(chr(0x660 + int(digit)) for digit in str(number))

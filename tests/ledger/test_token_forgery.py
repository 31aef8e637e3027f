"""Tokens are unforgeable: 100,000 mutated tokens and link segments, none accepted (pure, ~1 s)."""

from __future__ import annotations

import base64
import random

from ledger import tokens
from ledger.errors import InvalidToken
from ledger.tokens import TokenKeys, TokenPayload

KEYS = TokenKeys({1: b"k" * 32, 2: b"q" * 32}, current=2)
TODAY = 2200
ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"


def _genuine(rng: random.Random, count: int) -> list[str]:
    """Tokens the gateway could have minted (both keys, many clients, campaigns and subjects)."""
    out = []
    for _ in range(count):
        payload = TokenPayload(
            client_num=rng.randrange(1, 10_000),
            campaign_num=rng.randrange(1, 10_000_000),
            subject_ref=rng.randbytes(12),
            issued_day=TODAY - rng.randrange(0, 300),
        )
        out.append(tokens.sign(payload, TokenKeys(KEYS.keys, current=rng.choice([1, 2]))))
    return out


def _mutate(rng: random.Random, token: str, others: list[str]) -> str:
    """One forgery attempt derived from a genuine token (or two)."""
    kind = rng.randrange(7)
    chars = list(token)
    if kind == 0:  # change 1-3 characters
        for pos in rng.sample(range(len(chars)), rng.randint(1, 3)):
            chars[pos] = rng.choice(ALPHABET.replace(chars[pos], ""))
        return "".join(chars)
    if kind == 1:  # flip one bit of the decoded token and re-encode it correctly
        raw = bytearray(base64.b32decode(token.upper() + "=" * (-len(token) % 8)))
        raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
        return base64.b32encode(bytes(raw)).decode().rstrip("=").lower()
    if kind == 2:  # splice: the body of one token with the MAC of another
        other = rng.choice(others)
        cut = rng.randrange(1, min(len(token), len(other)))
        return token[:cut] + other[cut:]
    if kind == 3:  # truncate or extend
        if rng.random() < 0.5:
            return token[: rng.randrange(0, len(token))]
        return token + "".join(rng.choices(ALPHABET, k=rng.randint(1, 8)))
    if kind == 4:  # swap two characters
        i, j = rng.sample(range(len(chars)), 2)
        if chars[i] == chars[j]:
            chars[i] = rng.choice(ALPHABET.replace(chars[i], ""))
        chars[i], chars[j] = chars[j], chars[i]
        return "".join(chars)
    if kind == 5:  # entirely random base32 of a plausible length
        return "".join(rng.choices(ALPHABET, k=rng.randint(20, 52)))
    # an attacker's payload signed with a key of the right id but the wrong bytes
    key_id = rng.choice([1, 2])
    forged_keys = TokenKeys({key_id: rng.randbytes(32)}, current=key_id)
    payload = TokenPayload(rng.randrange(1, 10_000), rng.randrange(1, 10**6), rng.randbytes(12), TODAY)
    return tokens.sign(payload, forged_keys)


def test_hundred_thousand_mutated_tokens_none_accepted() -> None:
    """100,000 mutations of genuine tokens (edits, bit flips, splices, wrong keys) all raise InvalidToken."""
    rng = random.Random(20261122)
    genuine = _genuine(rng, 200)
    accepted = []
    attempts = 0
    genuine_set = set(genuine)
    for _ in range(100_000):
        candidate = _mutate(rng, rng.choice(genuine), genuine)
        if candidate in genuine_set:  # a mutation that happens to restore a genuine token
            continue
        attempts += 1
        try:
            tokens.verify(candidate, KEYS, today=TODAY, max_age_days=365)
        except InvalidToken:
            continue
        accepted.append(candidate)
    assert attempts > 99_000
    assert accepted == []
    # The oracle works: every genuine token does verify (the loop above could not pass vacuously).
    for token in genuine:
        tokens.verify(token, KEYS, today=TODAY, max_age_days=365)


def test_mutated_link_segments_none_accepted() -> None:
    """20,000 edited click-link segments (URL or MAC changed) are refused: the click endpoint redirects nowhere new."""
    rng = random.Random(7)
    segment = tokens.sign_link("https://shop.acme.example/sale?utm=1", KEYS)
    assert tokens.verify_link(segment, KEYS)[1] == "https://shop.acme.example/sale?utm=1"
    safe = "abcdefghijklmnopqrstuvwxyz0123456789-_"
    accepted = []
    for _ in range(20_000):
        chars = list(segment)
        for pos in rng.sample(range(len(chars)), rng.randint(1, 2)):
            chars[pos] = rng.choice(safe.replace(chars[pos].lower(), ""))
        candidate = "".join(chars)
        if candidate == segment:
            continue
        try:
            tokens.verify_link(candidate, KEYS)
        except InvalidToken:
            continue
        accepted.append(candidate)
    assert accepted == []

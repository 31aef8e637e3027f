"""Generated client passwords: usable on a command line as printed."""

from __future__ import annotations

from ledger.passwords import generate_password, hash_password, verify_password


def test_generated_passwords_never_start_with_a_dash() -> None:
    """A leading '-' reads as an option to swaks and curl; 1 in 64 raw tokens has one."""
    passwords = [generate_password() for _ in range(3000)]
    assert not [p for p in passwords if p.startswith("-")]
    assert len(set(passwords)) == len(passwords)
    assert all(len(p) == 32 for p in passwords)


def test_generated_password_verifies_against_its_hash() -> None:
    """What `client add` prints is what AUTH accepts."""
    password = generate_password()
    assert verify_password(password, hash_password(password))
    assert not verify_password(password + "x", hash_password(password))

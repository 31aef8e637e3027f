"""Country lookup, client address behind proxies, language choice and page colours."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smtp_gateway.http.geo import (
    BundledCountryLookup,
    GeoDatabaseError,
    client_ip,
    open_country_lookup,
    parse_networks,
)
from smtp_gateway.http.i18n import MESSAGES, choose_language, from_accept_language
from smtp_gateway.http.pages import MIN_CONTRAST, contrast, theme

PROXIES = parse_networks(["10.0.0.0/8", "2001:db8::/32", "192.0.2.1"])


@pytest.fixture(scope="module")
def bundled() -> BundledCountryLookup:
    """geoip2fast's bundled database, loaded once for the module."""
    return BundledCountryLookup()


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """Parse an address."""
    return ipaddress.ip_address(text)


def test_untrusted_peer_is_the_client_whatever_it_forwards() -> None:
    """A peer that is not a trusted proxy cannot claim another address."""
    assert client_ip("8.8.8.8", ["193.231.20.1"], PROXIES) == ip("8.8.8.8")
    assert client_ip("8.8.8.8", [], ()) == ip("8.8.8.8")


def test_trusted_proxy_chain_yields_the_nearest_untrusted_hop() -> None:
    """Hops are read right to left past trusted proxies; a spoofed left part is ignored."""
    assert client_ip("10.0.0.5", ["193.231.20.1"], PROXIES) == ip("193.231.20.1")
    assert client_ip("10.0.0.5", ["6.6.6.6, 193.231.20.1, 10.9.9.9"], PROXIES) == ip("193.231.20.1")
    assert client_ip("10.0.0.5", ["6.6.6.6", "193.231.20.1 , 192.0.2.1"], PROXIES) == ip("193.231.20.1")
    assert client_ip("2001:db8::1", ["2a02:2f0e::1"], PROXIES) == ip("2a02:2f0e::1")
    assert client_ip("::ffff:10.0.0.5", ["8.8.8.8"], PROXIES) == ip("8.8.8.8")


def test_garbage_forwarded_for_gives_no_address() -> None:
    """An unparseable hop ends the walk: nothing left of it can be believed."""
    assert client_ip("10.0.0.5", ["193.231.20.1, not-an-ip"], PROXIES) is None
    assert client_ip("10.0.0.5", ["unknown"], PROXIES) is None
    assert client_ip("garbage", [], PROXIES) is None
    assert client_ip(None, ["8.8.8.8"], PROXIES) is None


def test_all_hops_trusted_gives_the_leftmost() -> None:
    """A request from inside the proxy network is attributed to its first hop."""
    assert client_ip("10.0.0.5", ["10.0.0.9, 10.0.0.7"], PROXIES) == ip("10.0.0.9")
    assert client_ip("10.0.0.5", [], PROXIES) == ip("10.0.0.5")


def test_bad_proxy_cidr_is_a_clear_error() -> None:
    """A typo in trusted_proxies is refused with the offending value."""
    with pytest.raises(GeoDatabaseError, match=re.escape("10.0.0/33")):
        parse_networks(["10.0.0/33"])


def test_bundled_database_maps_known_addresses(bundled: BundledCountryLookup) -> None:
    """geoip2fast's bundled data: Romanian and US addresses (v4 and v6), nothing for private ones."""
    assert bundled.country(ip("193.231.20.1")) == "RO"
    assert bundled.country(ip("8.8.8.8")) == "US"
    assert bundled.country(ip("2a02:2f0e::1")) == "RO"
    for private in ("10.1.2.3", "127.0.0.1", "192.168.1.1", "::1", "fe80::1", "203.0.113.9"):
        assert bundled.country(ip(private)) == ""


def test_configured_maxmind_file_is_used(tmp_path: Path) -> None:
    """A configured .mmdb answers instead of the bundled data (here deliberately 'wrong')."""
    from mmdb_writer import MMDBWriter
    from netaddr import IPSet

    writer = MMDBWriter(ip_version=6, database_type="GeoLite2-Country", ipv4_compatible=True)
    writer.insert_network(IPSet(["8.8.8.0/24"]), {"country": {"iso_code": "FR"}})
    writer.insert_network(IPSet(["1.1.1.0/24"]), {"registered_country": {"iso_code": "au"}})
    path = tmp_path / "country.mmdb"
    writer.to_db_file(str(path))
    lookup = open_country_lookup(path)
    assert lookup.country(ip("8.8.8.8")) == "FR"
    assert lookup.country(ip("1.1.1.1")) == "AU"
    assert lookup.country(ip("193.231.20.1")) == ""
    assert lookup.country(ip("10.0.0.1")) == ""


def test_unusable_database_files_are_clear_errors(tmp_path: Path) -> None:
    """A missing or corrupt configured database is refused at start, naming the file."""
    with pytest.raises(GeoDatabaseError, match="does not exist"):
        open_country_lookup(tmp_path / "missing.mmdb")
    corrupt = tmp_path / "corrupt.mmdb"
    corrupt.write_bytes(b"not a maxmind database" * 10)
    with pytest.raises(GeoDatabaseError, match=re.escape("corrupt.mmdb")):
        open_country_lookup(corrupt)


def test_language_choice() -> None:
    """Override first, then Accept-Language by quality, then the default."""
    assert choose_language("ro", "en") == "ro"
    assert choose_language("RO-md", "") == "ro"
    assert choose_language("xx", "ro-RO,ro;q=0.9") == "ro"
    assert choose_language(None, "de;q=1, en;q=0.2, ro;q=0.8") == "ro"
    assert choose_language(None, "ro;q=0, en;q=0.1") == "en"
    assert choose_language(None, "", default="ro") == "ro"
    assert choose_language(None, "de, fr") == "en"
    assert from_accept_language("ro;q=abc, en;q=nan") is None
    assert from_accept_language(",,;;=,q=,ro;q=2") is None


def test_both_languages_have_every_message() -> None:
    """English and Romanian define the same keys, none empty."""
    assert MESSAGES["en"].keys() == MESSAGES["ro"].keys()
    assert all(text.strip() for table in MESSAGES.values() for text in table.values())


@given(st.from_regex(r"#[0-9a-fA-F]{6}", fullmatch=True))
def test_button_text_is_always_readable_on_the_accent(colour: str) -> None:
    """Whatever accent a client picks, the button text meets WCAG AA contrast on it."""
    chosen = theme({"accent_color": colour})
    assert contrast(chosen["accent"], chosen["accent_text"]) >= MIN_CONTRAST

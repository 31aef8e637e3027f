"""Country from a client IP, in memory: the IP is used here and dropped, never stored or logged.

The database is geoip2fast's bundled one (IPv4 and IPv6, shipped inside the package, nothing
fetched at run time) or a configured file: a MaxMind ``.mmdb`` (GeoLite2/GeoIP2 Country or City,
read with ``maxminddb``) or a geoip2fast ``.dat.gz``. ``X-Forwarded-For`` is believed only when
the connection comes from a configured trusted proxy.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

from smtp_gateway.errors import GatewayError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

BUNDLED_DATA_FILE = "geoip2fast-ipv6.dat.gz"
# Bounds the work one request can cause: nobody legitimately chains more proxies than this.
MAX_FORWARDED_HOPS = 32


class GeoDatabaseError(GatewayError):
    """The configured IP-to-country database cannot be read, or a proxy CIDR is malformed."""


class CountryLookup(Protocol):
    """Maps an IP address to an ISO 3166 alpha-2 country code ("" when unknown or private)."""

    def country(self, ip: IPAddress) -> str:
        """The country of ``ip``, or ""."""


def _clean_code(code: object) -> str:
    """Keep only a plausible ISO alpha-2 code (databases use '--', 'ZZ' or None for unknown)."""
    if isinstance(code, str) and len(code) == 2 and code.isascii() and code.isalpha():
        upper = code.upper()
        return "" if upper == "ZZ" else upper
    return ""


class BundledCountryLookup:
    """geoip2fast with a data file (its bundled IPv4+IPv6 database by default), all in memory."""

    def __init__(self, data_file: str = BUNDLED_DATA_FILE) -> None:
        """Load the data file (~0.1 s, once per process)."""
        from geoip2fast import GeoIP2Fast

        try:
            self._geo = GeoIP2Fast(verbose=False, geoip2fast_data_file=data_file)
        except Exception as exc:  # geoip2fast raises its own bare exception types
            raise GeoDatabaseError(f"cannot load geoip2fast database {data_file}: {exc}") from None

    def country(self, ip: IPAddress) -> str:
        """The country of ``ip`` per geoip2fast, or ""."""
        if not ip.is_global:
            return ""
        return _clean_code(self._geo.lookup(str(ip)).country_code)


class MaxMindCountryLookup:
    """A MaxMind DB file (GeoLite2/GeoIP2 Country or City) loaded into memory."""

    def __init__(self, path: Path) -> None:
        """Open ``path`` in memory mode; raises :class:`GeoDatabaseError` when unusable."""
        import maxminddb

        try:
            self._reader = maxminddb.open_database(str(path), maxminddb.MODE_MEMORY)
        except (OSError, ValueError, maxminddb.InvalidDatabaseError) as exc:
            raise GeoDatabaseError(f"cannot read MaxMind database {path}: {exc}") from None

    def country(self, ip: IPAddress) -> str:
        """The country of ``ip`` (its registered country when the location is unknown), or ""."""
        if not ip.is_global:
            return ""
        try:
            record: Any = self._reader.get(str(ip))
        except ValueError:  # an IPv6 address in an IPv4-only database
            return ""
        if not isinstance(record, dict):
            return ""
        for field in ("country", "registered_country"):
            entry = record.get(field)
            if isinstance(entry, dict) and _clean_code(entry.get("iso_code")):
                return _clean_code(entry.get("iso_code"))
        return ""


def open_country_lookup(path: Path | None) -> CountryLookup:
    """The lookup for a configured database file, or the bundled one when ``path`` is None."""
    if path is None:
        return BundledCountryLookup()
    if not path.is_file():
        raise GeoDatabaseError(f"IP-to-country database {path} does not exist")
    if path.suffix == ".mmdb":
        return MaxMindCountryLookup(path)
    return BundledCountryLookup(str(path.resolve()))


def parse_networks(cidrs: Iterable[str]) -> tuple[IPNetwork, ...]:
    """Parse the trusted-proxy CIDRs (a bare address is a /32 or /128)."""
    networks = []
    for cidr in cidrs:
        try:
            networks.append(ipaddress.ip_network(cidr.strip(), strict=False))
        except ValueError:
            raise GeoDatabaseError(f"trusted proxy {cidr!r} is not an IP address or CIDR") from None
    return tuple(networks)


def _parse_ip(text: str) -> IPAddress | None:
    """An IP address from a socket peer or a forwarded hop, or None (IPv4-mapped v6 unwrapped)."""
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(address: IPAddress, proxies: Sequence[IPNetwork]) -> bool:
    """Whether ``address`` is one of the trusted proxies."""
    return any(address.version == net.version and address in net for net in proxies)


def client_ip(
    peer: str | None, forwarded_for: Sequence[str], proxies: Sequence[IPNetwork]
) -> IPAddress | None:
    """The client's address: the peer, or — from a trusted proxy — the nearest untrusted hop.

    ``forwarded_for`` holds the raw ``X-Forwarded-For`` header values in order. Hops are read
    right to left (each proxy appends the address it saw), skipping trusted proxies; the first
    unparseable hop ends the walk, since nothing to its left can be believed.
    """
    address = _parse_ip(peer) if peer else None
    if address is None or not _trusted(address, proxies):
        return address
    hops = [hop for value in forwarded_for for hop in value.split(",")][-MAX_FORWARDED_HOPS:]
    for hop in reversed(hops):
        parsed = _parse_ip(hop)
        if parsed is None:
            return None
        address = parsed
        if not _trusted(parsed, proxies):
            return parsed
    return address

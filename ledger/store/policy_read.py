"""The RCPT-time read: everything the policy needs about one (client, subject) in one query.

The gateway asks this once per recipient, so it is the hottest read of the system (DESIGN §5,
§7). It was four statements (client and global suppressions, the relationship, the restriction
flag, hashed-list suppressions), each a thread hop through aiosqlite (~146 µs) and each queued
behind the event log's write transactions on the same connection. Now it is one ``UNION ALL``
statement (written once, for both backends), and on SQLite it runs synchronously on a separate
read-only connection (:meth:`SqliteDatabase.fetch_committed`, ~15 µs, never waits for a writer
in WAL mode).

Nothing is cached: each call reads the latest committed state, so an unsubscribe written by any
process or node is refused at the very next RCPT (DESIGN §2).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from datetime import datetime

from ledger.identity import Identity
from ledger.importing import HashAlgo
from ledger.models import GLOBAL_SCOPE, Reason, Suppression
from ledger.store.database import Database, Row, from_db_time
from ledger.store.ledger_store import SubjectState, _relationship_from_row
from ledger.store.sqlite import SqliteDatabase

# Row kinds of the union (first column).
_SUPPRESSION, _HASHED, _RELATIONSHIP, _SUBJECT = 1, 2, 3, 4

# Column layout: kind, text a, text b, time a, text c, time b, time c, time d. NULLs are typed
# with CAST so PostgreSQL resolves every column of the union to one type.
POLICY_STATE_SQL = (
    "SELECT 1, scope, reason, since, source, CAST(NULL AS BIGINT), CAST(NULL AS BIGINT), "
    "CAST(NULL AS BIGINT) FROM suppressions WHERE subject_key = $1 AND scope IN ($2, $3) "
    "UNION ALL "
    "SELECT 2, scope, reason, since, source, CAST(NULL AS BIGINT), CAST(NULL AS BIGINT), "
    "CAST(NULL AS BIGINT) FROM hashed_suppressions "
    "WHERE ((digest = $4 AND algo = $5) OR (digest = $6 AND algo = $7)) AND scope IN ($2, $3) "
    "UNION ALL "
    "SELECT 3, status, CAST(NULL AS TEXT), consent_at, CAST(NULL AS TEXT), first_sent_at, last_sent_at, "
    "last_engagement_at FROM relationships WHERE client_id = $3 AND subject_key = $1 "
    "UNION ALL "
    "SELECT 4, CAST(NULL AS TEXT), CAST(NULL AS TEXT), restricted, CAST(NULL AS TEXT), "
    "CAST(NULL AS BIGINT), CAST(NULL AS BIGINT), CAST(NULL AS BIGINT) FROM subjects WHERE subject_key = $1"
)


def address_digests(address: str) -> tuple[bytes, bytes]:
    """(SHA-256, MD5) of the lower-cased address, as hashed suppression lists are keyed.

    The same digests as :func:`ledger.store.imports.hashed_suppressions_for` (a test pins it).
    """
    lowered = address.lower().encode("utf-8")
    return hashlib.sha256(lowered).digest(), hashlib.md5(lowered, usedforsecurity=False).digest()


async def policy_state(
    db: Database, client_id: str, identity: Identity
) -> tuple[SubjectState, tuple[Suppression, ...]]:
    """(the subject's state for ``client_id``, matching hashed-list suppressions), latest committed."""
    sha, md5 = address_digests(identity.address) if identity.address else (b"", b"")
    args = (
        identity.subject_key,
        GLOBAL_SCOPE,
        client_id,
        sha,
        str(HashAlgo.SHA256),
        md5,
        str(HashAlgo.MD5),
    )
    if isinstance(db, SqliteDatabase):
        rows = await db.fetch_committed(POLICY_STATE_SQL, *args)
    else:
        rows = await db.fetch(POLICY_STATE_SQL, *args)
    return _state_from_rows(client_id, rows)


def _state_from_rows(client_id: str, rows: list[Row]) -> tuple[SubjectState, tuple[Suppression, ...]]:
    """Split the union's rows back into the policy's inputs."""
    suppressions: list[Suppression] = []
    hashed: list[Suppression] = []
    relationship = None
    restricted = False
    for row in rows:
        kind = row[0]
        if kind in (_SUPPRESSION, _HASHED):
            found = Suppression(row[1], Reason(row[2]), from_db_time(row[3]) or datetime.min, row[4])
            (suppressions if kind == _SUPPRESSION else hashed).append(found)
        elif kind == _RELATIONSHIP:
            relationship = _relationship_from_row(client_id, (row[1], row[3], row[5], row[6], row[7]))
        elif kind == _SUBJECT:
            restricted = bool(row[3])
    return SubjectState(tuple(suppressions), relationship, restricted), tuple(hashed)


# The batched form for the API's list check: one statement per chunk of subjects instead of one
# per subject (1,000 round trips to PostgreSQL would cost more than the 100 ms budget alone).
# Same rows as POLICY_STATE_SQL, with the matched key (subject key or digest) as column 2.
BATCH_CHUNK = 250


@functools.lru_cache(maxsize=16)
def _batch_sql(count: int, mark: str = "$") -> str:
    """The batched policy read for ``count`` subjects ($1 global, $2 client, $3/$4 algos).

    ``mark`` ``?`` writes SQLite's own numbered placeholders: the statement is ~20 KB, and
    rewriting its ``$n`` on every call cost more than a third of the read (profiled with ``python
    -m bench api-check``). Cached: a list check asks for the same few sizes again and again.
    """
    keys = ", ".join(f"{mark}{i}" for i in range(5, 5 + count))
    shas = ", ".join(f"{mark}{i}" for i in range(5 + count, 5 + 2 * count))
    md5s = ", ".join(f"{mark}{i}" for i in range(5 + 2 * count, 5 + 3 * count))
    nulls = "CAST(NULL AS BIGINT), CAST(NULL AS BIGINT), CAST(NULL AS BIGINT)"
    # On SQLite, the unary + keeps scope out of the index search: one range read per key (a key
    # has a row or two) instead of one search per key and scope (~35 % fewer B-tree descents).
    scopes = f"{'+' if mark == '?' else ''}scope IN ({mark}1, {mark}2)"
    hashed = f"SELECT 2, digest, scope, reason, since, source, {nulls} FROM hashed_suppressions WHERE "
    return (
        f"SELECT 1, subject_key, scope, reason, since, source, {nulls} FROM suppressions "
        f"WHERE subject_key IN ({keys}) AND {scopes} "
        # One branch per algorithm: ``(algo = a AND digest IN …) OR (…)`` made SQLite scan the
        # whole hashed list for every chunk; ``digest IN … AND algo = a`` searches its key.
        f"UNION ALL {hashed}digest IN ({shas}) AND algo = {mark}3 AND {scopes} "
        f"UNION ALL {hashed}digest IN ({md5s}) AND algo = {mark}4 AND {scopes} "
        "UNION ALL "
        "SELECT 3, subject_key, status, CAST(NULL AS TEXT), consent_at, CAST(NULL AS TEXT), "
        f"first_sent_at, last_sent_at, last_engagement_at FROM relationships "
        f"WHERE client_id = {mark}2 AND subject_key IN ({keys}) "
        "UNION ALL "
        "SELECT 4, subject_key, CAST(NULL AS TEXT), CAST(NULL AS TEXT), restricted, CAST(NULL AS TEXT), "
        f"{nulls} FROM subjects WHERE subject_key IN ({keys})"
    )


async def policy_states(
    db: Database, client_id: str, identities: Sequence[Identity]
) -> list[tuple[SubjectState, tuple[Suppression, ...]]]:
    """:func:`policy_state` for many subjects at once, in the order given (latest committed state)."""
    rows_by_key: dict[bytes, list[Row]] = {}
    # One subject key is one normalised address, so it has one pair of digests.
    digests_of: dict[bytes, tuple[bytes, bytes]] = {}
    owners: dict[bytes, list[bytes]] = {}
    for identity in identities:
        if identity.subject_key in digests_of:
            continue
        pair = address_digests(identity.address) if identity.address else (b"", b"")
        digests_of[identity.subject_key] = pair
        rows_by_key[identity.subject_key] = []
        for digest in pair:
            if digest:
                owners.setdefault(digest, []).append(identity.subject_key)
    unique = list(digests_of)
    for start in range(0, len(unique), BATCH_CHUNK):
        chunk = unique[start : start + BATCH_CHUNK]
        chunk_set = set(chunk)
        args = (
            GLOBAL_SCOPE,
            client_id,
            str(HashAlgo.SHA256),
            str(HashAlgo.MD5),
            *chunk,
            *(digests_of[key][0] for key in chunk),
            *(digests_of[key][1] for key in chunk),
        )
        if isinstance(db, SqliteDatabase):
            rows = await db.fetch_committed(_batch_sql(len(chunk), "?"), *args)
        else:
            rows = await db.fetch(_batch_sql(len(chunk)), *args)
        for row in rows:
            matched = bytes(row[1])
            unmatched = (row[0], *row[2:])
            if row[0] == _HASHED:
                for key in owners.get(matched, ()):
                    if key in chunk_set:
                        rows_by_key[key].append(unmatched)
            else:
                rows_by_key[matched].append(unmatched)
    return [_state_from_rows(client_id, rows_by_key[i.subject_key]) for i in identities]

"""``python -m bench NAME [options]``: run one benchmark (``relay``: the SMTP gateway end to end)."""

from __future__ import annotations

import importlib
import sys

# Benchmarks reachable by name; each module has main(argv) -> int.
BENCHMARKS = {
    "relay": "bench.relay",
    "links": "bench.http_links",
    "soak": "bench.soak",
    "purge": "bench.purge",
    "api-check": "bench.api_check",
}


def main(argv: list[str]) -> int:
    """Dispatch to the named benchmark."""
    if not argv or argv[0] not in BENCHMARKS:
        print(f"usage: python -m bench {{{','.join(BENCHMARKS)}}} [options]", file=sys.stderr)
        return 2
    module = importlib.import_module(BENCHMARKS[argv[0]])
    return int(module.main(argv[1:]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The soak, short: `python -m bench soak` for a few seconds with one SIGKILL — nothing lost, no leak."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def test_kill_and_restart_loses_nothing_and_leaks_no_unsubscribe() -> None:
    """6 s of load into `serve`, SIGKILLed once: every 250'd message reaches the sink; no copy after an unsubscribe."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "soak",
            "--seconds",
            "6",
            "--kills",
            "1",
            "--unsubscribes",
            "3",
            "--json",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.stdout.strip(), done.stderr
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["accepted"] >= 50, figures  # real load went through
    assert figures["kills"] == 1
    assert figures["unsubscribes_cli"] + figures["unsubscribes_one_click"] >= 1, figures
    assert figures["lost"] == 0, figures["lost_ids"]
    assert figures["leaks"] == 0, figures["leak_ids"]
    assert done.returncode == 0

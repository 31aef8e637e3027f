"""How `serve` maps its settings onto the submission listener."""

from __future__ import annotations

import os

import pytest

from cli.serve import submission_config
from cli.settings import Settings


@pytest.mark.parametrize("workers", [1, 2, 3, 8])
def test_rsa_step_in_a_thread_only_while_a_core_is_spare(workers: int) -> None:
    """Fewer workers than cores: the DKIM RSA step goes to a thread; as many or more: it stays inline."""
    config = submission_config(Settings(workers=workers))
    assert config.rsa_in_thread is (workers < (os.cpu_count() or 1))

"""A throwaway Postfix instance for the relay benchmark: its own config and queue under a temp dir.

``postfix -c DIR start`` with a generated ``main.cf``/``master.cf``: listens on 127.0.0.1:PORT,
relays everything from 127.0.0.0/8 to ``[127.0.0.1]:SINKPORT`` through its durable queue (the
fsync'ed queue files are part of what Postfix costs, as the gateway's outbox is part of its cost).
No chroot, no local delivery, logging to a file in the instance directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

POSTFIX = "/usr/sbin/postfix"

# The services a relay-only instance needs (chroot off: the temp dir has no chroot jail).
_MASTER_CF = """\
{listen} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def available() -> bool:
    """Whether Postfix is installed and we may start an instance (it must start as root)."""
    return os.access(POSTFIX, os.X_OK) and os.geteuid() == 0


def _postconf(name: str) -> str:
    """A default Postfix parameter value (daemon and command directories differ by distribution)."""
    out = subprocess.run(["/usr/sbin/postconf", "-dh", name], capture_output=True, text=True, check=True)
    return out.stdout.strip()


@contextmanager
def instance(base: Path, port: int, sink_port: int, processes: int = 100) -> Iterator[Path]:
    """Run a Postfix instance listening on 127.0.0.1:``port``; yields its config directory."""
    name = f"cgbench{uuid.uuid4().hex[:8]}"
    conf = base / "postfix-etc"
    queue = base / "postfix-queue"
    data = base / "postfix-data"
    conf.mkdir(parents=True)
    base.chmod(0o755)  # the postfix user must reach its queue and data directories
    queue.mkdir()
    data.mkdir()
    shutil.chown(data, "postfix", "postfix")
    main_cf = {
        "compatibility_level": "3.6",
        "queue_directory": str(queue),
        "data_directory": str(data),
        "command_directory": _postconf("command_directory"),
        "daemon_directory": _postconf("daemon_directory"),
        "meta_directory": _postconf("meta_directory"),
        "shlib_directory": _postconf("shlib_directory"),
        "mail_owner": "postfix",
        "setgid_group": "postdrop",
        "myhostname": f"{name}.bench.invalid",
        "mydestination": "",
        "local_recipient_maps": "",
        "local_transport": "error:local delivery disabled",
        "inet_interfaces": "127.0.0.1",
        "inet_protocols": "ipv4",
        "mynetworks": "127.0.0.0/8",
        "relayhost": f"[127.0.0.1]:{sink_port}",
        "smtpd_relay_restrictions": "permit_mynetworks, reject",
        "smtpd_recipient_restrictions": "permit_mynetworks, reject",
        "default_process_limit": str(processes),
        "smtpd_client_connection_count_limit": "0",
        "smtpd_client_message_rate_limit": "0",
        "anvil_rate_time_unit": "60s",
        "message_size_limit": str(50 * 1024 * 1024),
        "maillog_file": str(base / "postfix.log"),
        "maillog_file_prefixes": str(base),
        "syslog_name": name,
        "alias_maps": "",
        "alias_database": "",
        "biff": "no",
        "smtp_tls_security_level": "none",
        "smtpd_tls_security_level": "none",
        "multi_instance_enable": "no",
    }
    (conf / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in main_cf.items()))
    (conf / "master.cf").write_text(_MASTER_CF.format(listen=f"127.0.0.1:{port}"))
    env = {**os.environ, "MAIL_CONFIG": str(conf)}
    # Postfix reports start-up errors to syslog, or to stderr only when it is a terminal: run it
    # under script(1) so a failure explains itself.
    command = f"{POSTFIX} -c {conf} start"
    started = subprocess.run(
        ["script", "-qec", command, "/dev/null"], env=env, capture_output=True, text=True
    )
    if started.returncode != 0:
        raise RuntimeError(f"postfix did not start: {started.stdout.strip()[-500:]}")
    try:
        yield conf
    finally:
        subprocess.run([POSTFIX, "-c", str(conf), "stop"], env=env, capture_output=True, text=True)

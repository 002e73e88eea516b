"""systemd's sd_notify protocol: one datagram per message to $NOTIFY_SOCKET."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


class Notifier:
    """Sends READY=1, STATUS=..., WATCHDOG=1, STOPPING=1 when systemd asked for them."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        address = environ.get("NOTIFY_SOCKET", "")
        self.address = "\0" + address[1:] if address.startswith("@") else address
        usec = environ.get("WATCHDOG_USEC", "")
        pid = environ.get("WATCHDOG_PID", "")
        wanted = usec.isdigit() and (not pid or pid == str(os.getpid()))
        self.watchdog_interval = int(usec) / 2_000_000 if wanted else None
        self.next_ping = 0.0
        self.last_status = ""

    def keep_alive(self, now: float, status: str) -> float | None:
        """Ping the watchdog when due (with the status line), else send the status if it changed.
        Returns when the next ping is due (monotonic seconds), or None without a watchdog."""
        if self.watchdog_interval and now >= self.next_ping:
            self.send("WATCHDOG=1", status)
            self.next_ping = now + self.watchdog_interval
        elif status != self.last_status:
            self.send(status)
        self.last_status = status
        return self.next_ping if self.watchdog_interval else None

    def send(self, *lines: str) -> None:
        if not self.address:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto("\n".join(lines).encode(), self.address)
        except OSError as exc:
            log.warning("Cannot notify systemd at %s: %s.", self.address.replace("\0", "@"), exc)

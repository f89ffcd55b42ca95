"""Text from outside (a hardware document, a plan, a user's option) made safe to print or write.

Control characters would reach a terminal as escape sequences (OSC/CSI), break a YAML stream or
start a new line in a unit file; they are shown as \\xNN instead."""

from __future__ import annotations

import re
from typing import Any

# C0, DEL, C1 (CSI/OSC as one byte) and the Unicode line/paragraph separators
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def printable(text: Any) -> str:
    """`text` with each control character written as \\xNN (or \\uNNNN)."""
    def esc(m: re.Match) -> str:
        c = ord(m.group())
        return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"
    return CONTROL.sub(esc, str(text))


# An environment variable whose value is a credential, by its name: ends in KEY (API_KEY,
# SECRET_KEY, APIKEY), TOKEN or PASSWD, or holds SECRET or PASSWORD anywhere. Logs redact their
# values (launch/runner.py) and exports never inline them (launch/export.py). Broad on purpose:
# a name wrongly taken for a secret costs a reference instead of a value; the reverse leaks it.
SECRET_NAME = re.compile(r"(_KEY|^KEY|APIKEY|TOKEN|PASSWD)$|SECRET|PASSWORD", re.IGNORECASE)


def secret_name(name: str) -> bool:
    return bool(SECRET_NAME.search(name))

"""Text that came from a file, made safe to print.

Names, producer strings, op types, metadata and error details from a model, bundle,
archive or calibration file are data. Printed raw they can drive the terminal (ESC and
OSC sequences: window title, clear screen, OSC 52 clipboard writes, hyperlinks; BEL;
C1 controls such as the 8-bit CSI) or rich's markup (``[link=...]`` makes a link,
``[/]`` raises an error). ``escape_text`` replaces every control character except tab
with a visible ``\\xNN``/``\\uNNNN`` form; ``escape_markup`` also escapes rich markup, for
text inside a rich table or ``console.print``; ``escape_html`` is for the HTML report.
"""

from __future__ import annotations

import html
import re
from typing import Any

# C0 (except tab), DEL, C1, and the Unicode line/paragraph separators and bidi overrides
_UNSAFE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _visible(m: re.Match) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def escape_text(text: Any) -> str:
    """``text`` as a string with no control characters (ESC, BEL, CSI, newlines ... shown as ``\\xNN``)."""
    return _UNSAFE.sub(_visible, str(text))


def escape_markup(text: Any) -> str:
    """``escape_text`` plus rich markup escaped: safe inside ``console.print`` and rich tables."""
    from rich.markup import escape

    return escape(escape_text(text))


def escape_html(text: Any) -> str:
    """``escape_text`` plus HTML escaping (quotes too): safe in element text and attribute values."""
    return html.escape(escape_text(text), quote=True)

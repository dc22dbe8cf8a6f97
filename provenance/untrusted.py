"""Untrusted bytes: bounded JSON parsing and escaped printing.

Every JSON document read from a bundle goes through `loads` (formats.read_json, read_jsonl,
the bundle reader): it must be UTF-8, no larger than a byte limit, nested no deeper than a
depth limit, and hold no integer with more digits (nor a number literal longer) than a
digit limit, so a hostile file cannot exhaust the stack, the CPU (a 5,000-digit integer) or
memory, and every refusal is one ValueError naming what was wrong.

Everything from a bundle that is printed (names, messages, values) goes through `escape`:
control characters (newlines included), lone surrogates and bidirectional-override
characters become visible escapes, so a resource named "x\\nINTEGRITY    PASS" cannot
forge a line of a report.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

MAX_JSON_BYTES = 64 << 20  # one JSON file of a bundle
MAX_DEPTH = 64  # nesting of arrays and objects
MAX_NUMBER_CHARS = 64  # digits of an integer, characters of any number literal


class UntrustedJSONError(ValueError):
    """A JSON document was refused: the message says why (callers prefix the file's name)."""


@dataclass(frozen=True)
class JSONLimits:
    max_bytes: int = MAX_JSON_BYTES
    max_depth: int = MAX_DEPTH
    max_number_chars: int = MAX_NUMBER_CHARS


DEFAULT_JSON_LIMITS = JSONLimits()


def _parse_int(limit: int) -> Any:
    def parse(s: str) -> int:
        if len(s.lstrip("-")) > limit:
            raise UntrustedJSONError(f"an integer with {len(s.lstrip('-'))} digits (the limit is {limit})")
        return int(s)

    return parse


def _parse_float(limit: int) -> Any:
    def parse(s: str) -> float:
        if len(s) > limit:
            raise UntrustedJSONError(f"a number literal of {len(s)} characters (the limit is {limit})")
        return float(s)

    return parse


def _depth_ok(obj: Any, max_depth: int) -> bool:
    """No container deeper than max_depth: walked a level at a time (one comprehension per level)."""
    containers = (dict, list)
    level = [obj] if isinstance(obj, containers) else []
    depth = 1
    while level:
        if depth > max_depth:
            return False
        level = [c for node in level for c in (node.values() if isinstance(node, dict) else node)
                 if isinstance(c, containers)]
        depth += 1
    return True


def loads(data: bytes | str, limits: JSONLimits = DEFAULT_JSON_LIMITS) -> Any:
    """Parse one JSON document from untrusted bytes; UntrustedJSONError says why it was refused."""
    if len(data) > limits.max_bytes:
        raise UntrustedJSONError(f"{len(data)} bytes is larger than the {limits.max_bytes}-byte limit")
    if isinstance(data, bytes | bytearray | memoryview):
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UntrustedJSONError(f"not UTF-8 (byte {exc.start})") from None
    else:
        text = data
    try:
        obj = json.loads(text, parse_int=_parse_int(limits.max_number_chars),
                         parse_float=_parse_float(limits.max_number_chars))
    except UntrustedJSONError:
        raise
    except RecursionError:
        raise UntrustedJSONError(f"nested more than {limits.max_depth} levels deep") from None
    except json.JSONDecodeError as exc:
        raise UntrustedJSONError(f"malformed JSON ({exc})") from None
    except ValueError as exc:  # pragma: no cover - json's own limits
        raise UntrustedJSONError(f"malformed JSON ({exc})") from None
    # cheap when the document cannot be that deep: count its brackets first
    if text.count("[") + text.count("{") > limits.max_depth and not _depth_ok(obj, limits.max_depth):
        raise UntrustedJSONError(f"nested more than {limits.max_depth} levels deep")
    return obj


# --- printing -----------------------------------------------------------------------------

_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _esc(m: re.Match[str]) -> str:
    c = m.group()
    if c in _NAMED:
        return _NAMED[c]
    o = ord(c)
    return f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}"


def escape(text: Any) -> str:
    """`text` as one printable line: control characters, lone surrogates and bidi overrides escaped."""
    s = text if isinstance(text, str) else str(text)
    return _UNSAFE.sub(_esc, s)


def escape_lines(text: str) -> str:
    """Escape each line of `text` (a report built of lines) and keep its line breaks."""
    return "\n".join(escape(line) for line in text.split("\n"))


def escape_all(obj: Any) -> Any:
    """A copy of a JSON-like value with every string in it (keys included) escaped: for a report that is
    formatted from a bundle's names and values, so that none of them can forge a line of it."""
    if isinstance(obj, str):
        return escape(obj)
    if isinstance(obj, dict):
        return {escape(k) if isinstance(k, str) else k: escape_all(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [escape_all(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(escape_all(v) for v in obj)
    return obj


def name_of(raw: str) -> str:
    """A file or member name for a message: escaped, quoted as repr would quote it."""
    return repr(raw) if _UNSAFE.search(raw) is None else repr(escape(raw))

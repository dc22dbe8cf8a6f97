"""Secret redaction: nothing secret is ever written into a bundle.

A secret is the value of an environment variable whose name contains TOKEN,
KEY, SECRET, PASSWORD, PASSWD, CREDENTIAL or starts with AWS_, and any
credentials inside a URL (scheme://user:pass@host).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

SECRET_NAME = re.compile(r"TOKEN|KEY|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH", re.IGNORECASE)
URL_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<cred>[^/@\s:]+(?::[^/@\s]*)?)@")
MASK = "[REDACTED]"
_MIN_SECRET_LEN = 4  # shorter values would mask ordinary text


def is_secret_name(name: str) -> bool:
    return bool(SECRET_NAME.search(name)) or name.upper().startswith("AWS_")


def strip_url_credentials(text: str) -> str:
    return URL_CREDENTIALS.sub(lambda m: f"{m.group('scheme')}{MASK}@", text)


class Redactor:
    """Masks the secret values of an environment (and URL credentials) in text and JSON."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        values = {v for k, v in env.items() if is_secret_name(k) and len(v) >= _MIN_SECRET_LEN}
        # longest first, so that a secret containing another is masked whole
        self._values = sorted(values, key=len, reverse=True)
        self._pattern = re.compile("|".join(re.escape(v) for v in self._values)) if self._values else None
        self._bytes_values = [v.encode() for v in self._values]

    @property
    def longest(self) -> int:
        return len(self._values[0].encode()) if self._values else 0

    def text(self, s: str) -> str:
        if self._pattern is not None:
            s = self._pattern.sub(MASK, s)
        if "@" in s:
            s = strip_url_credentials(s)
        return s

    def bytes(self, b: bytes) -> bytes:
        for v in self._bytes_values:
            if v in b:
                b = b.replace(v, MASK.encode())
        if b"@" in b and b"://" in b:
            b = strip_url_credentials(b.decode("utf-8", "surrogateescape")).encode("utf-8", "surrogateescape")
        return b

    def obj(self, o: Any) -> Any:
        if isinstance(o, str):
            return self.text(o)
        if isinstance(o, dict):
            return {self.text(str(k)): self.obj(v) for k, v in o.items()}
        if isinstance(o, list | tuple):
            return [self.obj(v) for v in o]
        return o

    def environ(self, env: Mapping[str, str]) -> dict[str, str]:
        """A copy of env with secret variables masked by name, other values cleaned."""
        return {k: (MASK if is_secret_name(k) else self.text(v)) for k, v in env.items()}

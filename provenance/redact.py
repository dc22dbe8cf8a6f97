"""Secret redaction: nothing secret is ever written into a bundle.

A secret is the value of an environment variable whose name contains TOKEN,
KEY, SECRET, PASSWORD, PASSWD, CREDENTIAL or starts with AWS_, any
credentials inside a URL (scheme://user:pass@host), and the value of a
command-line argument whose name says it is one (`--hf_token=...`,
`--api-key X`, `wandb.api_key=...`: see `secret_arg_values`). The Redactor
learns all of them when a run starts, so that every file of the bundle, the
captured stdout and stderr included, has them masked.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

SECRET_NAME = re.compile(r"TOKEN|KEY|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH", re.IGNORECASE)
URL_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<cred>[^/@\s:]+(?::[^/@\s]*)?)@")
MASK = "[REDACTED]"
_MIN_SECRET_LEN = 4  # shorter values would mask ordinary text


# an argument names a secret when its last word is one of these, or any word is an unambiguous one
_ARG_LAST_WORDS = frozenset({"token", "key", "secret", "secrets", "password", "passwd", "pwd", "auth",
                             "credential", "credentials", "apikey", "passphrase"})
_ARG_ANY_WORDS = frozenset({"password", "passwd", "secret", "apikey", "credentials", "credential"})
_MIN_ARG_SECRET_LEN = 6
_NOT_SECRETS = frozenset({"true", "false", "none", "null", "yes", "no"})


def is_secret_arg_name(name: str) -> bool:
    """`--hf_token`, `--api-key`, `wandb.api_key`, `--db-password`: yes; `--max_tokens`, `--key_dim`: no."""
    words = [w for w in re.split(r"[-_.]+", name.strip("-").lower()) if w]
    return bool(words) and (words[-1] in _ARG_LAST_WORDS or any(w in _ARG_ANY_WORDS for w in words))


def secret_arg_values(argv: Sequence[str]) -> list[str]:
    """The values of secret-named arguments: `--name=value`, `--name value` and `name=value` forms."""
    out = []
    args = list(argv)
    for i, arg in enumerate(args):
        if not isinstance(arg, str):
            continue
        name, sep, value = arg.partition("=")
        if sep:
            if is_secret_arg_name(name):
                out.append(value)
        elif arg.startswith("-") and is_secret_arg_name(arg) and i + 1 < len(args) \
                and isinstance(args[i + 1], str) and not args[i + 1].startswith("-"):
            out.append(args[i + 1])
    return [v for v in out if len(v) >= _MIN_ARG_SECRET_LEN and v.lower() not in _NOT_SECRETS
            and not v.isdigit()]


def is_secret_name(name: str) -> bool:
    return bool(SECRET_NAME.search(name)) or name.upper().startswith("AWS_")


def strip_url_credentials(text: str) -> str:
    return URL_CREDENTIALS.sub(lambda m: f"{m.group('scheme')}{MASK}@", text)


class Redactor:
    """Masks the secret values of an environment (and URL credentials) in text and JSON."""

    def __init__(self, environ: Mapping[str, str] | None = None, argv: Sequence[str] = ()) -> None:
        env = os.environ if environ is None else environ
        values = {v for k, v in env.items() if is_secret_name(k) and len(v) >= _MIN_SECRET_LEN}
        values |= set(secret_arg_values(argv))
        # longest first, so that a secret containing another is masked whole
        self._values = sorted(values, key=len, reverse=True)
        self._pattern = re.compile("|".join(re.escape(v) for v in self._values)) if self._values else None
        self._bytes_values = [v.encode() for v in self._values]

    def argv(self, argv: Sequence[str]) -> list[str]:
        """The command line as it may be recorded: secret values masked."""
        return [self.text(a) if isinstance(a, str) else a for a in argv]

    @property
    def longest(self) -> int:
        return len(self._values[0].encode()) if self._values else 0

    def text(self, s: str) -> str:
        if self._pattern is not None:
            s = self._pattern.sub(MASK, s)
        if "@" in s:
            s = strip_url_credentials(s)
        return s

    def values_bytes(self, b: bytes) -> bytes:
        """Mask the learned secret values only (not URL credentials)."""
        for v in self._bytes_values:
            if v in b:
                b = b.replace(v, MASK.encode())
        return b

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

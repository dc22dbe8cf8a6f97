"""The bundle as the checks see it, and the audit's limits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from provenance.reader import Bundle, BundleFileError, ReadLimits, Refused

__all__ = ["DEFAULT_LIMITS", "AuditLimits", "AuditRefused", "BundleFileError", "BundleView", "Progress", "is_hex64",
           "is_int"]

AuditRefused = Refused  # the input was refused as hostile or unusable; the message names what was refused


@dataclass(frozen=True)
class AuditLimits(ReadLimits):
    max_findings: int = 1000  # findings kept per check (the rest are counted)


DEFAULT_LIMITS = AuditLimits()


class Progress(Protocol):
    """Told how many bytes there are to read, then how many were read (from several threads)."""

    def start(self, label: str, total: int) -> None: ...
    def advance(self, n: int) -> None: ...
    def finish(self) -> None: ...


# The bundle as the checks see it: the reader (provenance.reader.Bundle) of the audited folder or
# archive, with the digests the integrity pass computed (`digests`) and what the seal states
# (`sealed`: manifest resources, `subject`: the bundle's name in the seal).
BundleView = Bundle


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_hex64(v: Any) -> bool:
    return isinstance(v, str) and len(v) == 64 and not v.strip("0123456789abcdef")

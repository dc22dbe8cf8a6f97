"""What the audit finds: findings, the result of each check, the integrity result."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Finding:
    level: str  # "error" | "warning"
    message: str
    file: str | None = None
    expected: str | None = None
    actual: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"level": self.level, "message": self.message, "file": self.file, "expected": self.expected,
                "actual": self.actual}


class SkipCheck(Exception):
    """Raised by a check that does not apply to this bundle; the message says why."""


@dataclass
class CheckResult:
    name: str
    title: str
    status: str = "pass"  # pass | warn | fail | skip
    summary: str = ""
    findings: list[Finding] = field(default_factory=list)
    dropped: int = 0  # findings beyond the limit, counted but not kept
    limit: int = 1000

    def _add(self, f: Finding) -> None:
        if len(self.findings) >= self.limit:
            self.dropped += 1
            if f.level == "error":
                self.status = "fail"
            return
        self.findings.append(f)

    def error(self, message: str, *, file: str | None = None, expected: str | None = None,
              actual: str | None = None) -> None:
        self._add(Finding("error", message, file, expected, actual))

    def warn(self, message: str, *, file: str | None = None, expected: str | None = None,
             actual: str | None = None) -> None:
        self._add(Finding("warning", message, file, expected, actual))

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "error"]

    @property
    def ok(self) -> bool:
        return self.status != "fail"

    def settle(self) -> None:
        if self.status == "skip":
            return
        if self.errors or self.status == "fail":
            self.status = "fail"
        elif self.findings:
            self.status = "warn"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "title": self.title, "status": self.status, "summary": self.summary,
                "findings": [f.to_dict() for f in self.findings], "findings_dropped": self.dropped}


@dataclass
class FileDiff:
    name: str
    expected: str | None  # hex sha256 in the manifest
    actual: str | None  # hex sha256 on disk

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "expected": sha(self.expected), "actual": sha(self.actual)}


def sha(hexd: str | None) -> str | None:
    return None if hexd is None else f"sha256:{hexd}"


@dataclass
class IntegrityResult:
    sealed: bool
    files: int = 0
    bytes: int = 0
    seconds: float = 0.0
    workers: int = 1
    root_manifest: str | None = None  # subject digest stated in manifest.json
    root_recomputed: str | None = None  # recomputed over the manifest's resource digests
    root_actual: str | None = None  # computed over the files as they are
    missing: list[FileDiff] = field(default_factory=list)
    extra: list[FileDiff] = field(default_factory=list)
    changed: list[FileDiff] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    digests: dict[str, str] = field(default_factory=dict)  # actual hex digests (not serialised)

    @property
    def ok(self) -> bool:
        return self.sealed and not (self.missing or self.extra or self.changed) and \
            not any(f.level == "error" for f in self.findings)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "sealed": self.sealed, "files": self.files, "bytes": self.bytes,
            "seconds": round(self.seconds, 4), "workers": self.workers,
            "root_digest": {"manifest": sha(self.root_manifest), "recomputed": sha(self.root_recomputed),
                            "actual": sha(self.root_actual)},
            "missing": [d.to_dict() for d in self.missing],
            "extra": [d.to_dict() for d in self.extra],
            "changed": [d.to_dict() for d in self.changed],
            "findings": [f.to_dict() for f in self.findings],
        }

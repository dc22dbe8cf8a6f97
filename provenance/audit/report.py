"""The audit's report: its verdict, its failures, the fullyopen.audit/v1 document and the text."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from provenance import formats
from provenance.audit.render import render_text
from provenance.audit.results import CheckResult, IntegrityResult, sha
from provenance.openness import OpennessReport

AUDIT_SCHEMA = formats.AUDIT_SCHEMA
EXIT_OK, EXIT_FAILED, EXIT_REFUSED = 0, 1, 2


@dataclass
class AuditReport:
    target: str
    kind: str  # folder | archive
    integrity: IntegrityResult
    checks: list[CheckResult]
    openness: OpennessReport
    run: dict[str, Any]
    archive_sha256: str | None = None
    seconds: float = 0.0

    @property
    def consistency_ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def ok(self) -> bool:
        return self.integrity.ok and self.consistency_ok and self.openness.requirement_met is not False

    @property
    def exit_status(self) -> int:
        return EXIT_OK if self.ok else EXIT_FAILED

    def check(self, name: str) -> CheckResult:
        return next(c for c in self.checks if c.name == name)

    def failures(self) -> list[str]:
        """One line per reason the audit fails, each naming the file."""
        out = []
        i = self.integrity
        out += [f"missing: {d.name} (expected sha256:{d.expected})" for d in i.missing]
        out += [f"not covered by the manifest: {d.name} (sha256:{d.actual})" for d in i.extra]
        out += [f"changed: {d.name} (expected sha256:{d.expected}, found sha256:{d.actual})" for d in i.changed]
        out += [f"{f.file}: {f.message}" for f in i.findings if f.level == "error"]
        for c in self.checks:
            out += [f"{c.name}: {(f.file + ': ') if f.file else ''}{f.message}" for f in c.errors]
        if self.openness.requirement_met is False:
            out.append(f"openness: MOF class {self.openness.required_class} required, "
                       f"{self.openness.highest_class or 'no class'} met")
        return out

    def to_dict(self) -> dict[str, Any]:
        from provenance import __version__

        return {
            "schema": AUDIT_SCHEMA,
            "tool": {"name": "fullyopen", "version": __version__},
            "target": {"path": self.target, "kind": self.kind, "archive_sha256": sha(self.archive_sha256)},
            "run": self.run,
            "ok": self.ok,
            "verdict": "pass" if self.ok else "fail",
            "exit_status": self.exit_status,
            "seconds": round(self.seconds, 4),
            "integrity": self.integrity.to_dict(),
            "consistency": {"ok": self.consistency_ok, "checks": [c.to_dict() for c in self.checks]},
            "openness": self.openness.to_dict(),
            "failures": self.failures(),
        }

    def to_json(self) -> str:
        return printable(formats.dumps(self.to_dict()))

    def to_text(self, max_findings: int = 20) -> str:
        return render_text(self, max_findings)


def printable(text: str) -> str:
    """Text that encodes as UTF-8: a lone surrogate read from a hostile bundle becomes a \\u escape."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def refusal_to_dict(target: str, message: str) -> dict[str, Any]:
    """The --json document of an audit that refused its input."""
    from provenance import __version__

    return {"schema": AUDIT_SCHEMA, "tool": {"name": "fullyopen", "version": __version__},
            "target": {"path": target, "kind": None, "archive_sha256": None}, "ok": False, "verdict": "refused",
            "exit_status": EXIT_REFUSED, "refused": {"message": message}, "failures": [f"refused: {message}"]}

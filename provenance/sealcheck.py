"""The audit's check of reseals.jsonl: every re-seal of a sealed bundle leads back to the seal it replaced.

`prov note` on a sealed bundle and `prov seal --force` check the existing seal, then append a
record to reseals.jsonl before sealing again. This check recomputes, from the current seal,
each earlier root digest and shows the chain (old -> new root digest, what changed, why).
"""

from __future__ import annotations

from provenance import audit, formats
from provenance.recover import printable, verify_reseals


def check_reseals(view: audit.BundleView, out: audit.CheckResult) -> None:
    if not view.has(formats.RESEALS):
        raise audit.SkipCheck("never re-sealed")
    if view.sealed is None:
        raise audit.SkipCheck("not sealed")
    sealed = view.sealed
    if formats.RESEALS not in sealed:
        out.error(f"{formats.RESEALS} is not covered by the seal", file=formats.RESEALS)
        return
    root_hex = formats.root_digest(sealed[n] for n in sorted(sealed, key=formats.resource_sort_key))
    size = view.size(formats.RESEALS)
    if size > view.limits.max_jsonl_bytes:
        raise audit.BundleFileError(formats.RESEALS, f"{size} bytes is larger than the limit; refused")
    data = view.read_bytes(formats.RESEALS, view.limits.max_jsonl_bytes)  # through the reader: bounded, no link
    records, problems = verify_reseals(sealed, root_hex, data)
    for p in problems:
        out.error(p, file=formats.RESEALS)
    n = len(records)
    out.summary = f"re-sealed {n} time{'s' if n != 1 else ''}" + ("" if problems else
                                                              ", each leads back to the seal before")
    for r in records[-3:]:
        changed = ", ".join(printable(str(c)) for c in r["changed"][:3]) or "no file"
        out.summary += (f"; {r['previous_root_digest'][:19]}.. -> {r['new_root_digest'][:19]}.. by "
                        f"{printable(str(r['command']))[:40]} ({printable(str(r['reason']))[:80]}; changed {changed})")


# listed by the audit through the entry point `reseals` in pyproject.toml (fullyopen.audit_checks)
RESEALS = audit.Check("reseals", "re-seals of a sealed bundle", check_reseals)

"""The check of a release signature (provenance.verify, below release/): verified when present; with a
pinned key (`prov audit --trust KEY.pub`, or provenance.verify.trusting), only that signer passes."""

from __future__ import annotations

from provenance import formats
from provenance.audit.results import CheckResult, SkipCheck
from provenance.audit.view import BundleView


def check_signature(view: BundleView, out: CheckResult) -> None:
    """release signature"""
    from provenance.verify import check_trust, trusted_key  # cryptography: imported only when a check runs

    trusted = trusted_key()
    if trusted is None and not (view.has(formats.SIGNATURE) or view.has(formats.SIGSTORE_SIGNATURE)):
        raise SkipCheck("not signed")
    for rel in [formats.MANIFEST, *view.under(formats.RELEASE_DIR)]:  # verify_signature reads them from disk
        if view.has(rel):
            view.path(rel)
    ok, sentence, res = check_trust(view.root, trusted)  # rehash=False: the audit checks every file itself
    if ok is None and res is None:
        raise SkipCheck("not signed")
    where = res["signature"] if res else formats.SIGNATURE
    if ok is False:
        out.error(sentence, file=where)
    elif ok is None:
        out.warn(f"{sentence}: certificate not checked offline", file=where)
    out.summary = sentence + ("" if ok else " — NOT VALID" if ok is False else "")

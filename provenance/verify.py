"""Verifying a released bundle's signature, below release/ so that the audit needs nothing from it.

    res = verify_signature("runs/<run_id>")         # None when the bundle is not signed
    res["ok"], res["fingerprint"], res["error"]

The bundle signature is the OpenSSF `model_signing` Sigstore bundle at formats.SIGNATURE
(a DSSE envelope over the OMS statement of the sealed bundle, ECDSA with the signer's key);
the SLSA provenance is a DSSE envelope signed with the same key. Verification compares the
signed resources with manifest.json (the audit checks every file against manifest.json
itself); rehash=True lets model_signing hash the folder again. provenance.release.signing
makes the signatures and re-exports these functions.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from cryptography import exceptions as crypto_exceptions
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from provenance import formats, reader
from provenance.hashing import root_digest

SIGSTORE_BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle"


class SigningError(RuntimeError):
    """A key, signature or envelope is unusable or does not verify; the message says which and why."""


def _read(bundle: Path, rel: str, text: bool = False) -> Any:
    """Bundle file `rel` through reader.Bundle (bounded, never through a link): parsed JSON, or the text when
    `text`; a missing or malformed file is a FormatError naming it."""
    try:
        with reader.Bundle.of_files(bundle, [rel]) as b:
            if text:
                return b.read_bytes(rel, b.limits.max_json_bytes).decode("utf-8", "replace")
            return b.json(rel)
    except (reader.Refused, reader.BundleFileError) as exc:
        raise formats.FormatError(str(exc)) from None


def load_public_key(path: str | os.PathLike[str]) -> ec.EllipticCurvePublicKey:
    path = Path(path).expanduser()
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except OSError as exc:
        raise SigningError(f"{path}: cannot read the public key ({exc.strerror})") from None
    except ValueError as exc:
        raise SigningError(f"{path}: not a PEM public key ({exc})") from None
    check_curve(key, path)
    return key  # type: ignore[return-value]


def check_curve(key: Any, path: Path) -> None:
    if not isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        raise SigningError(f"{path}: not an elliptic-curve key (model_signing signs with EC keys; "
                           "make one with `prov keygen`)")
    if key.curve.name not in ("secp256r1", "secp384r1", "secp521r1"):
        raise SigningError(f"{path}: curve {key.curve.name} is not supported (use P-256, P-384 or P-521)")


def public_pem(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def fingerprint(key: ec.EllipticCurvePublicKey) -> str:
    """sha256 of the PEM public key: what model_signing records as the signature's key hint."""
    return "sha256:" + hashlib.sha256(public_pem(key)).hexdigest()


def curve_hash(key: ec.EllipticCurvePublicKey) -> hashes.HashAlgorithm:
    size = key.curve.key_size
    return hashes.SHA256() if size == 256 else hashes.SHA384() if size == 384 else hashes.SHA512()



def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding."""
    t = payload_type.encode()
    return b"DSSEv1 %d %b %d %b" % (len(t), t, len(payload), payload)



def dsse_verify(envelope: dict[str, Any], key: ec.EllipticCurvePublicKey) -> tuple[str, bytes]:
    """(payload type, payload) of an envelope one of whose signatures key made; SigningError if none."""
    try:
        payload_type = envelope["payloadType"]
        payload = base64.b64decode(envelope["payload"], validate=True)
        sigs = envelope["signatures"]
        if not isinstance(payload_type, str) or not isinstance(sigs, list) or not sigs:
            raise ValueError("no signatures")
    except (KeyError, TypeError, ValueError) as exc:
        raise SigningError(f"malformed DSSE envelope ({exc})") from None
    message = pae(payload_type, payload)
    for s in sigs:
        try:
            key.verify(base64.b64decode(s["sig"], validate=True), message, ec.ECDSA(curve_hash(key)))
            return payload_type, payload
        except (crypto_exceptions.InvalidSignature, KeyError, TypeError, ValueError):
            continue
    raise SigningError("the DSSE signature does not verify with this key")



def model_signing_module() -> Any:
    try:
        import model_signing
    except ImportError:
        raise SigningError("the model_signing library is not installed (pip install 'fullyopen[sign]')") from None
    return model_signing


def hashing_config() -> Any:
    model_signing = model_signing_module()
    return model_signing.hashing.Config().set_ignored_paths(paths=sorted(formats.UNSEALED), ignore_git_paths=True)


def verify_command(bundle: str, public_key: str = "<signer.pub.pem>") -> str:
    """The stock model_signing command line that verifies a released bundle."""
    return f"model_signing verify key {bundle} --public_key {public_key} --signature {bundle}/{formats.SIGNATURE}"


def signed_statement(sig_json: dict[str, Any]) -> dict[str, Any]:
    env = sig_json.get("dsseEnvelope") or {}
    try:
        return json.loads(base64.b64decode(env["payload"], validate=True))
    except (KeyError, TypeError, ValueError) as exc:
        raise SigningError(f"{formats.SIGNATURE}: no readable DSSE payload ({exc})") from None


def compare_with_manifest(bundle: Path, statement: dict[str, Any]) -> tuple[str, str | None]:
    """(signed root digest, None if the signed resources are exactly manifest.json's, else why not)."""
    root, signed = formats.parse_oms_statement(statement)
    names = sorted(signed, key=formats.resource_sort_key)
    if root_digest(signed[n] for n in names) != root:
        return root, "the signed statement's root digest does not match its own resources"
    try:
        m_root, sealed = formats.parse_oms_statement(_read(bundle, formats.MANIFEST))
    except (OSError, formats.FormatError) as exc:
        return root, f"{formats.MANIFEST} is unreadable ({exc})"
    if signed == sealed and root == m_root:
        return root, None
    only_signed = sorted(set(signed) - set(sealed))
    only_sealed = sorted(set(sealed) - set(signed))
    changed = sorted(n for n in set(signed) & set(sealed) if signed[n] != sealed[n])
    parts = []
    if changed:
        parts.append(f"digest differs for {', '.join(changed[:5])}")
    if only_sealed:
        parts.append(f"not signed: {', '.join(only_sealed[:5])}")
    if only_signed:
        parts.append(f"signed but not in {formats.MANIFEST}: {', '.join(only_signed[:5])}")
    return root, f"the signature does not cover the sealed bundle ({'; '.join(parts)})"



def sigstore_identity(sig_json: dict[str, Any]) -> dict[str, Any]:
    """Identity and issuer named by a Sigstore bundle's certificate (not verified: that needs network)."""
    from cryptography import x509

    vm = sig_json.get("verificationMaterial") or {}
    raw = (vm.get("certificate") or {}).get("rawBytes")
    if raw is None:
        chain = (vm.get("x509CertificateChain") or {}).get("certificates") or []
        raw = chain[0].get("rawBytes") if chain else None
    if not raw:
        return {}
    try:
        cert = x509.load_der_x509_certificate(base64.b64decode(raw))
    except ValueError:
        return {}
    out: dict[str, Any] = {"certificate_public_key": cert.public_key()}
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [str(v) for v in san.get_values_for_type(x509.RFC822Name)] + \
                [str(v) for v in san.get_values_for_type(x509.UniformResourceIdentifier)]
        out["identity"] = names[0] if names else None
    except x509.ExtensionNotFound:
        out["identity"] = None
    for oid in ("1.3.6.1.4.1.57264.1.8", "1.3.6.1.4.1.57264.1.1"):  # Fulcio OIDC issuer (v2, v1)
        try:
            ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(oid)).value
            value = getattr(ext, "value", b"")
            out["issuer"] = value[2:].decode(errors="replace") if oid.endswith(".8") else value.decode(errors="replace")
            break
        except x509.ExtensionNotFound:
            continue
    return out


# --- verification (what `prov audit` calls) ----------------------------------------------------


def read_sig(path: Path) -> dict[str, Any]:
    try:
        obj = _read(path.parent, path.name)
    except (OSError, formats.FormatError) as exc:
        raise SigningError(f"{path.name}: unreadable ({exc})") from None
    if not isinstance(obj, dict) or not str(obj.get("mediaType", "")).startswith(SIGSTORE_BUNDLE_MEDIA_TYPE):
        raise SigningError(f"{path.name}: not a Sigstore bundle (as model_signing writes)")
    return obj


def verify_envelope_over_bundle(bundle: Path, sig_json: dict[str, Any], key: Any) -> tuple[str, str | None]:
    env = sig_json.get("dsseEnvelope")
    if not isinstance(env, dict):
        raise SigningError(f"{formats.SIGNATURE}: no DSSE envelope")
    # model_signing's envelope names its fields in protobuf JSON style
    envelope = {"payload": env.get("payload"), "payloadType": env.get("payloadType"),
                "signatures": env.get("signatures")}
    ptype, payload = dsse_verify(envelope, key)
    if ptype != formats.DSSE_PAYLOAD_TYPE:
        raise SigningError(f"unexpected payload type {ptype!r}")
    try:
        statement = json.loads(payload)
    except ValueError:
        raise SigningError("the signed payload is not JSON") from None
    return compare_with_manifest(bundle, statement)


def verify_statement_envelope(bundle: str | os.PathLike[str], key: ec.EllipticCurvePublicKey, envelope_rel: str,
                              plain_rel: str, predicate: str) -> dict[str, Any] | None:
    """Check a signed statement of the release (SLSA provenance, evaluation results): its signature, the
    same statement as the plain file, and subjects as sealed. None when the envelope is absent."""
    bundle = Path(bundle)
    env_path = bundle / envelope_rel
    if not env_path.is_file():
        return None
    out: dict[str, Any] = {"envelope": envelope_rel, "ok": False, "error": None}
    try:
        lines = [ln for ln in _read(bundle, envelope_rel, text=True).splitlines() if ln.strip()]
        if len(lines) != 1:
            raise SigningError(f"{envelope_rel}: expected one DSSE envelope, found {len(lines)}")
        _, payload = dsse_verify(json.loads(lines[0]), key)
        statement = json.loads(payload)
        if statement.get("predicateType") != predicate:
            raise SigningError(f"{envelope_rel}: predicateType is not {predicate}")
        plain_path = bundle / plain_rel
        if plain_path.is_file() and _read(bundle, plain_rel) != statement:
            raise SigningError(f"{plain_rel} differs from the statement signed in {envelope_rel}")
        _, sealed = formats.parse_oms_statement(_read(bundle, formats.MANIFEST))
        for s in statement.get("subject", []):
            want = (s.get("digest") or {}).get("sha256")
            if sealed.get(s.get("name")) != want and s.get("name") != statement.get("predicate", {}).get(
                    "run", {}).get("id"):
                raise SigningError(f"subject {s.get('name')} (sha256:{want}) of {envelope_rel} is not in the sealed "
                                   "bundle with that digest")
        out["ok"] = True
        out["subjects"] = len(statement.get("subject", []))
    except SigningError as exc:
        out["error"] = str(exc)
    except (OSError, ValueError, formats.FormatError) as exc:
        out["error"] = f"{envelope_rel}: {exc}"
    return out


def verify_slsa(bundle: str | os.PathLike[str], key: ec.EllipticCurvePublicKey) -> dict[str, Any] | None:
    """Check the signed SLSA envelope: signature, same statement as the plain file, subjects as sealed."""
    return verify_statement_envelope(bundle, key, formats.SLSA_ENVELOPE, formats.SLSA_STATEMENT,
                                     formats.SLSA_PREDICATE)


def verify_signature(bundle_dir: str | os.PathLike[str], public_key: str | os.PathLike[str] | None = None,
                     rehash: bool = False) -> dict[str, Any] | None:
    """Verify a released bundle's signature; None when the bundle has none.

    Returns {"ok", "kind", "fingerprint", "error", "signature", "public_key", "key_source",
    "trusted_key", "root_digest", "checked", "slsa", "verify_command", ...}.

    The public key is `public_key` when given (a key you trust), else the one the bundle
    carries (release/signer.pub.pem): that proves the bundle is intact and signed by the
    holder of the key with that fingerprint, so compare the fingerprint with the one the
    producer publishes. With rehash=False (what `prov audit` uses, since it checks every
    file against manifest.json itself) the signed resources are compared with
    manifest.json; rehash=True lets model_signing hash the whole folder again.
    Sigstore (keyless) signatures are reported with their identity, but their certificate
    is not verified offline: use `model_signing verify sigstore` for that.
    """
    bundle = Path(bundle_dir)
    key_sig, store_sig = bundle / formats.SIGNATURE, bundle / formats.SIGSTORE_SIGNATURE
    if not key_sig.is_file() and not store_sig.is_file():
        return None
    result: dict[str, Any] = {"ok": False, "kind": "key" if key_sig.is_file() else "sigstore", "fingerprint": None,
                              "error": None, "signature": formats.SIGNATURE if key_sig.is_file()
                              else formats.SIGSTORE_SIGNATURE, "public_key": None, "key_source": None,
                              "trusted_key": public_key is not None, "root_digest": None,
                              "checked": "files" if rehash else "manifest", "slsa": None, "eval": None,
                              "verify_command": verify_command(str(bundle))}
    if store_sig.is_file():
        result["sigstore"] = verify_sigstore_offline(bundle, store_sig)
    if not key_sig.is_file():
        s = result.pop("sigstore")
        result.update({k: v for k, v in s.items() if k != "certificate_public_key"})
        return result
    try:
        sig_json = read_sig(key_sig)
        hint = ((sig_json.get("verificationMaterial") or {}).get("publicKey") or {}).get("hint")
        if public_key is not None:
            key_file, source = Path(public_key).expanduser(), "given"
        else:
            key_file, source = bundle / formats.SIGNER_PUBLIC_KEY, "bundle"
            if not key_file.is_file():
                result["fingerprint"] = f"sha256:{hint}" if hint else None
                raise SigningError(f"no public key to verify with: {formats.SIGNER_PUBLIC_KEY} is missing "
                                   "(pass the signer's public key)")
        key = load_public_key(key_file)
        fp = fingerprint(key)
        result.update({"fingerprint": fp, "public_key": str(key_file) if source == "given" else
                       formats.SIGNER_PUBLIC_KEY, "key_source": source,
                       "verify_command": verify_command(str(bundle), str(key_file))})
        if hint and f"sha256:{hint}" != fp:
            raise SigningError(f"the signature was made by key sha256:{hint}, not by {fp}")
        root, problem = verify_envelope_over_bundle(bundle, sig_json, key)
        result["root_digest"] = root
        if problem is not None:
            raise SigningError(problem)
        if rehash:
            model_signing = model_signing_module()
            try:
                model_signing.verifying.Config().use_elliptic_key_verifier(public_key=key_file).set_hashing_config(
                    hashing_config()).verify(bundle, key_sig)
            except ValueError as exc:
                raise SigningError(f"model_signing: {exc}") from None
        result["slsa"] = verify_slsa(bundle, key)
        if result["slsa"] is not None and not result["slsa"]["ok"]:
            raise SigningError(result["slsa"]["error"])
        result["eval"] = verify_statement_envelope(bundle, key, formats.EVAL_ENVELOPE, formats.EVAL_STATEMENT,
                                                   formats.EVAL_PREDICATE)
        if result["eval"] is not None and not result["eval"]["ok"]:
            raise SigningError(result["eval"]["error"])
        result["ok"] = True
    except SigningError as exc:
        result["error"] = str(exc)
    except (OSError, formats.FormatError) as exc:
        result["error"] = f"{formats.SIGNATURE}: {exc}"
    return result


def verify_sigstore_offline(bundle: Path, path: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": "sigstore", "signature": formats.SIGSTORE_SIGNATURE, "ok": None, "error": None,
                           "note": "certificate chain and transparency log not checked offline; verify with "
                                   "`model_signing verify sigstore <bundle> --signature <bundle>/"
                                   f"{formats.SIGSTORE_SIGNATURE} --identity <who> --identity_provider <issuer>`"}
    try:
        sig_json = read_sig(path)
        ident = sigstore_identity(sig_json)
        out["identity"], out["issuer"] = ident.get("identity"), ident.get("issuer")
        key = ident.get("certificate_public_key")
        if isinstance(key, ec.EllipticCurvePublicKey):
            root, problem = verify_envelope_over_bundle(bundle, sig_json, key)
            out["root_digest"] = root
            if problem is not None:
                out.update({"ok": False, "error": problem})
    except SigningError as exc:
        out.update({"ok": False, "error": str(exc)})
    return out


# --- pinned trust: the verifier's own key, never the one the bundle names -----------------------

_TRUSTED_KEY: ContextVar[str | None] = ContextVar("prov_trusted_key", default=None)


@contextmanager
def trusting(public_key: str | os.PathLike[str] | None) -> Iterator[None]:
    """Within the block, the audit's signature check accepts only a signature by this public key."""
    if public_key is not None:
        load_public_key(public_key)  # a clear error now, not a failed check later
    token = _TRUSTED_KEY.set(None if public_key is None else str(public_key))
    try:
        yield
    finally:
        _TRUSTED_KEY.reset(token)


def trusted_key() -> str | None:
    """The public key `trusting` pinned for this context (None: no key is pinned)."""
    return _TRUSTED_KEY.get()


def check_trust(bundle: str | os.PathLike[str], public_key: str | os.PathLike[str] | None
                ) -> tuple[bool | None, str, dict[str, Any] | None]:
    """(ok, sentence, verify_signature result) for the audit.

    With a trusted key: ok only if the bundle is signed and the signature verifies with that key
    (any other signer fails, however valid its own signature). Without one: a valid signature is
    reported as made by an untrusted key, naming its fingerprint; ok None when not signed.
    """
    if public_key is None:
        res = verify_signature(bundle, rehash=False)  # the audit itself checks every file against the seal
        if res is None:
            return None, "not signed", None
        who = f"key {res['fingerprint']}" if res.get("fingerprint") else f"identity {res.get('identity')}"
        if res["ok"] is False:
            return False, f"the signature does not verify: {res['error']}", res
        if res["kind"] == "key":
            return True, (f"signed by an untrusted key {res['fingerprint']} (the key the bundle carries; pin the "
                          "signer with --trust KEY.pub)"), res
        return res["ok"], f"signed ({res['kind']}) by {who}", res
    trusted_fp = fingerprint(load_public_key(public_key))
    res = verify_signature(bundle, public_key=public_key, rehash=False)
    if res is None:
        return False, f"not signed, but a signature by the trusted key {trusted_fp} is required", None
    if res["kind"] != "key":
        return False, f"signed with Sigstore only, not by the trusted key {trusted_fp}", res
    if not res["ok"]:
        return False, f"not signed by the trusted key {trusted_fp}: {res['error']}", res
    return True, f"signed by the trusted key {trusted_fp}", res

"""Signatures of a released bundle: keys, the model_signing signature, and DSSE envelopes.

The bundle is signed with the OpenSSF `model_signing` library itself: it hashes the
folder, ignoring exactly the files our seal leaves out (formats.UNSEALED: the
manifest, the lock and the signature files), so that the statement it signs lists the
same resources, with the same root digest, as manifest.json. The signature is a
Sigstore bundle (JSON) at formats.SIGNATURE, and the stock command verifies it as is:

    model_signing verify key <bundle> --public_key <pub.pem> --signature <bundle>/release/model.sig

Other statements (the SLSA provenance) are signed with the same key as DSSE envelopes
(https://github.com/secure-systems-lab/dsse), ECDSA over the DSSE pre-authentication
encoding, as model_signing signs its own payload.

A key's fingerprint is "sha256:" + the sha256 of its public key in PEM
(SubjectPublicKeyInfo): the `publicKey.hint` model_signing writes into the signature.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from cryptography import exceptions as crypto_exceptions
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from provenance import formats
from provenance.hashing import root_digest

KEY_NAME = "release-key.pem"
PUBLIC_KEY_NAME = "release-key.pub.pem"
DEFAULT_KEY_DIR = "~/.config/fullyopen"
PASSWORD_ENV = "PROV_KEY_PASSWORD"  # password of an encrypted private key, if any
SIGSTORE_BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle"


class SigningError(RuntimeError):
    """A key or signature is unusable; the message says which and why."""


# --- keys ------------------------------------------------------------------------------------


def generate_key(out_dir: str | os.PathLike[str], force: bool = False) -> tuple[Path, Path, str]:
    """Write a new EC P-256 key pair into out_dir: (private key path, public key path, fingerprint).

    The private key is PKCS#8 PEM, created with mode 0600 (never world-readable, not
    even for a moment); an existing key is never overwritten unless force is set.
    """
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    priv_path, pub_path = out / KEY_NAME, out / PUBLIC_KEY_NAME
    if priv_path.exists() and not force:
        raise SigningError(f"{priv_path}: a key already exists; not overwriting it (use --force to replace it)")
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd, tmp = tempfile.mkstemp(prefix=f".{KEY_NAME}.", suffix=".tmp", dir=out)  # mkstemp: mode 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, priv_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    formats.atomic_write_bytes(pub_path, public_pem(key.public_key()))
    os.chmod(pub_path, 0o644)
    return priv_path, pub_path, fingerprint(key.public_key())


def load_private_key(path: str | os.PathLike[str]) -> ec.EllipticCurvePrivateKey:
    """An EC private key from a PEM file (password from $PROV_KEY_PASSWORD when encrypted)."""
    path = Path(path).expanduser()
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SigningError(f"{path}: cannot read the private key ({exc.strerror})") from None
    password = os.environ.get(PASSWORD_ENV)
    try:
        key = serialization.load_pem_private_key(data, password.encode() if password else None)
    except TypeError:
        raise SigningError(f"{path}: the key is encrypted; set {PASSWORD_ENV} to its password") from None
    except ValueError as exc:
        raise SigningError(f"{path}: not a PEM private key ({exc})") from None
    _check_curve(key, path)
    return key  # type: ignore[return-value]


def load_public_key(path: str | os.PathLike[str]) -> ec.EllipticCurvePublicKey:
    path = Path(path).expanduser()
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except OSError as exc:
        raise SigningError(f"{path}: cannot read the public key ({exc.strerror})") from None
    except ValueError as exc:
        raise SigningError(f"{path}: not a PEM public key ({exc})") from None
    _check_curve(key, path)
    return key  # type: ignore[return-value]


def _check_curve(key: Any, path: Path) -> None:
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


def _curve_hash(key: ec.EllipticCurvePublicKey) -> hashes.HashAlgorithm:
    size = key.curve.key_size
    return hashes.SHA256() if size == 256 else hashes.SHA384() if size == 384 else hashes.SHA512()


# --- DSSE ----------------------------------------------------------------------------------------


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding."""
    t = payload_type.encode()
    return b"DSSEv1 %d %b %d %b" % (len(t), t, len(payload), payload)


def dsse_sign(statement: dict[str, Any], key: ec.EllipticCurvePrivateKey,
              payload_type: str = formats.DSSE_PAYLOAD_TYPE) -> dict[str, Any]:
    """A DSSE envelope over the canonical JSON of statement, signed with key."""
    payload = json.dumps(statement, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    sig = key.sign(pae(payload_type, payload), ec.ECDSA(_curve_hash(key.public_key())))
    keyid = fingerprint(key.public_key()).split(":", 1)[1]
    return {"payload": base64.b64encode(payload).decode(), "payloadType": payload_type,
            "signatures": [{"keyid": keyid, "sig": base64.b64encode(sig).decode()}]}


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
            key.verify(base64.b64decode(s["sig"], validate=True), message, ec.ECDSA(_curve_hash(key)))
            return payload_type, payload
        except (crypto_exceptions.InvalidSignature, KeyError, TypeError, ValueError):
            continue
    raise SigningError("the DSSE signature does not verify with this key")


# --- the bundle signature (model_signing) ----------------------------------------------------


def _model_signing() -> Any:
    try:
        import model_signing
    except ImportError:
        raise SigningError("the model_signing library is not installed (pip install 'fullyopen[sign]')") from None
    return model_signing


def _hashing_config() -> Any:
    model_signing = _model_signing()
    return model_signing.hashing.Config().set_ignored_paths(paths=sorted(formats.UNSEALED), ignore_git_paths=True)


def verify_command(bundle: str, public_key: str = "<signer.pub.pem>") -> str:
    """The stock model_signing command line that verifies a released bundle."""
    return f"model_signing verify key {bundle} --public_key {public_key} --signature {bundle}/{formats.SIGNATURE}"


def _signed_statement(sig_json: dict[str, Any]) -> dict[str, Any]:
    env = sig_json.get("dsseEnvelope") or {}
    try:
        return json.loads(base64.b64decode(env["payload"], validate=True))
    except (KeyError, TypeError, ValueError) as exc:
        raise SigningError(f"{formats.SIGNATURE}: no readable DSSE payload ({exc})") from None


def _compare_with_manifest(bundle: Path, statement: dict[str, Any]) -> tuple[str, str | None]:
    """(signed root digest, None if the signed resources are exactly manifest.json's, else why not)."""
    root, signed = formats.parse_oms_statement(statement)
    names = sorted(signed, key=formats.resource_sort_key)
    if root_digest(signed[n] for n in names) != root:
        return root, "the signed statement's root digest does not match its own resources"
    try:
        m_root, sealed = formats.parse_oms_statement(formats.read_json(bundle / formats.MANIFEST))
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


def sign_bundle(bundle: str | os.PathLike[str], key_path: str | os.PathLike[str]) -> dict[str, Any]:
    """Sign a sealed bundle with model_signing and an EC private key; write formats.SIGNATURE.

    Checks afterwards that what was signed is exactly the sealed bundle (same resources,
    same root digest as manifest.json); otherwise the signature is removed and SigningError raised.
    """
    model_signing = _model_signing()
    bundle = Path(bundle)
    key_path = Path(key_path).expanduser()
    key = load_private_key(key_path)  # a clear error before model_signing's
    tmpdir = Path(tempfile.mkdtemp(prefix="prov-sign-"))
    try:
        tmp_sig = tmpdir / "model.sig"
        password = os.environ.get(PASSWORD_ENV)
        secret: Any = password.encode() if password else None  # its key loader needs bytes (hinted as str)
        model_signing.signing.Config().use_elliptic_key_signer(private_key=key_path, password=secret) \
            .set_hashing_config(_hashing_config()).sign(bundle, tmp_sig)
        data = tmp_sig.read_bytes()
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    root, problem = _compare_with_manifest(bundle, _signed_statement(json.loads(data)))
    if problem is not None:
        raise SigningError(f"{bundle}: {problem}; the bundle was not signed")
    formats.atomic_write_bytes(bundle / formats.SIGNATURE, data)
    return {"signature": formats.SIGNATURE, "fingerprint": fingerprint(key.public_key()), "root_digest": root,
            "kind": "key"}


def sign_bundle_sigstore(bundle: str | os.PathLike[str], identity_token: str | None = None,
                         use_staging: bool = False) -> dict[str, Any]:
    """Keyless signing with Sigstore (needs network and an OIDC identity); writes formats.SIGSTORE_SIGNATURE.

    Not exercised by the test suite (it cannot run offline).
    """
    model_signing = _model_signing()
    bundle = Path(bundle)
    tmpdir = Path(tempfile.mkdtemp(prefix="prov-sign-"))
    try:
        tmp_sig = tmpdir / "model.sigstore.json"
        model_signing.signing.Config().use_sigstore_signer(
            identity_token=identity_token, use_staging=use_staging).set_hashing_config(
            _hashing_config()).sign(bundle, tmp_sig)
        data = tmp_sig.read_bytes()
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    root, problem = _compare_with_manifest(bundle, _signed_statement(json.loads(data)))
    if problem is not None:
        raise SigningError(f"{bundle}: {problem}; the bundle was not signed")
    formats.atomic_write_bytes(bundle / formats.SIGSTORE_SIGNATURE, data)
    return {"signature": formats.SIGSTORE_SIGNATURE, "root_digest": root, "kind": "sigstore",
            "identity": _sigstore_identity(json.loads(data)).get("identity")}


def _sigstore_identity(sig_json: dict[str, Any]) -> dict[str, Any]:
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


def _read_sig(path: Path) -> dict[str, Any]:
    try:
        obj = formats.read_json(path)
    except (OSError, formats.FormatError) as exc:
        raise SigningError(f"{path.name}: unreadable ({exc})") from None
    if not isinstance(obj, dict) or not str(obj.get("mediaType", "")).startswith(SIGSTORE_BUNDLE_MEDIA_TYPE):
        raise SigningError(f"{path.name}: not a Sigstore bundle (as model_signing writes)")
    return obj


def _verify_envelope_over_bundle(bundle: Path, sig_json: dict[str, Any], key: Any) -> tuple[str, str | None]:
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
    return _compare_with_manifest(bundle, statement)


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
        lines = [ln for ln in env_path.read_text().splitlines() if ln.strip()]
        if len(lines) != 1:
            raise SigningError(f"{envelope_rel}: expected one DSSE envelope, found {len(lines)}")
        _, payload = dsse_verify(json.loads(lines[0]), key)
        statement = json.loads(payload)
        if statement.get("predicateType") != predicate:
            raise SigningError(f"{envelope_rel}: predicateType is not {predicate}")
        plain_path = bundle / plain_rel
        if plain_path.is_file() and formats.read_json(plain_path) != statement:
            raise SigningError(f"{plain_rel} differs from the statement signed in {envelope_rel}")
        _, sealed = formats.parse_oms_statement(formats.read_json(bundle / formats.MANIFEST))
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
        result["sigstore"] = _verify_sigstore_offline(bundle, store_sig)
    if not key_sig.is_file():
        s = result.pop("sigstore")
        result.update({k: v for k, v in s.items() if k != "certificate_public_key"})
        return result
    try:
        sig_json = _read_sig(key_sig)
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
        root, problem = _verify_envelope_over_bundle(bundle, sig_json, key)
        result["root_digest"] = root
        if problem is not None:
            raise SigningError(problem)
        if rehash:
            model_signing = _model_signing()
            try:
                model_signing.verifying.Config().use_elliptic_key_verifier(public_key=key_file).set_hashing_config(
                    _hashing_config()).verify(bundle, key_sig)
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


def _verify_sigstore_offline(bundle: Path, path: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": "sigstore", "signature": formats.SIGSTORE_SIGNATURE, "ok": None, "error": None,
                           "note": "certificate chain and transparency log not checked offline; verify with "
                                   "`model_signing verify sigstore <bundle> --signature <bundle>/"
                                   f"{formats.SIGSTORE_SIGNATURE} --identity <who> --identity_provider <issuer>`"}
    try:
        sig_json = _read_sig(path)
        ident = _sigstore_identity(sig_json)
        out["identity"], out["issuer"] = ident.get("identity"), ident.get("issuer")
        key = ident.get("certificate_public_key")
        if isinstance(key, ec.EllipticCurvePublicKey):
            root, problem = _verify_envelope_over_bundle(bundle, sig_json, key)
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


def _register_audit_check() -> None:
    """`prov audit` verifies a signature when a bundle has one and names the signer's key."""
    from provenance import audit as A

    def check_signature(view: A.BundleView, out: A.CheckResult) -> None:
        trusted = _TRUSTED_KEY.get()
        ok, sentence, res = check_trust(view.root, trusted)
        if ok is None and res is None:
            raise A.SkipCheck("not signed")
        where = res["signature"] if res else formats.SIGNATURE
        if ok is False:
            out.error(sentence, file=where)
        elif ok is None:
            out.warn(f"{sentence}: certificate not checked offline", file=where)
        out.summary = sentence + ("" if ok else " — NOT VALID" if ok is False else "")

    A.register_check("signature", "release signature", check_signature, replace=True)


_register_audit_check()

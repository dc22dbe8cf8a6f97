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
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from provenance import formats
from provenance.verify import (  # verification lives below release/ (the audit uses it); re-exported here
    SIGSTORE_BUNDLE_MEDIA_TYPE,
    SigningError,
    check_curve,
    check_trust,
    compare_with_manifest,
    curve_hash,
    dsse_verify,
    fingerprint,
    hashing_config,
    load_public_key,
    model_signing_module,
    pae,
    public_pem,
    signed_statement,
    sigstore_identity,
    trusting,
    verify_command,
    verify_signature,
    verify_slsa,
    verify_statement_envelope,
)

KEY_NAME = "release-key.pem"
PUBLIC_KEY_NAME = "release-key.pub.pem"
DEFAULT_KEY_DIR = "~/.config/fullyopen"
PASSWORD_ENV = "PROV_KEY_PASSWORD"  # password of an encrypted private key, if any



# --- keys ------------------------------------------------------------------------------------


def generate_key(out_dir: str | os.PathLike[str], force: bool = False) -> tuple[Path, Path, str]:
    """Write a new EC P-256 key pair into out_dir: (private key path, public key path, fingerprint).

    The private key is PKCS#8 PEM, created with mode 0600 (never world-readable, not
    even for a moment); an existing key is never overwritten unless force is set.
    """
    out = Path(out_dir).expanduser()
    if out.suffix.lower() in (".pem", ".key") and not out.is_dir():
        # `prov keygen -o key.pem` names the private key itself (the public key goes beside it: key.pub.pem)
        priv_path, pub_path = out, out.with_name(f"{out.stem}.pub{out.suffix}")
        out = out.parent
        out.mkdir(parents=True, exist_ok=True, mode=0o700)
    else:
        out.mkdir(parents=True, exist_ok=True, mode=0o700)
        priv_path, pub_path = out / KEY_NAME, out / PUBLIC_KEY_NAME
    if priv_path.exists() and not force:
        raise SigningError(f"{priv_path}: a key already exists; not overwriting it (use --force to replace it)")
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd, tmp = tempfile.mkstemp(prefix=f".{priv_path.name}.", suffix=".tmp", dir=out)  # mkstemp: mode 0600
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
    check_curve(key, path)
    return key  # type: ignore[return-value]


# --- DSSE ----------------------------------------------------------------------------------------


def dsse_sign(statement: dict[str, Any], key: ec.EllipticCurvePrivateKey,
              payload_type: str = formats.DSSE_PAYLOAD_TYPE) -> dict[str, Any]:
    """A DSSE envelope over the canonical JSON of statement, signed with key."""
    payload = json.dumps(statement, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    sig = key.sign(pae(payload_type, payload), ec.ECDSA(curve_hash(key.public_key())))
    keyid = fingerprint(key.public_key()).split(":", 1)[1]
    return {"payload": base64.b64encode(payload).decode(), "payloadType": payload_type,
            "signatures": [{"keyid": keyid, "sig": base64.b64encode(sig).decode()}]}


# --- the bundle signature (model_signing) ----------------------------------------------------


def sign_bundle(bundle: str | os.PathLike[str], key_path: str | os.PathLike[str]) -> dict[str, Any]:
    """Sign a sealed bundle with model_signing and an EC private key; write formats.SIGNATURE.

    Checks afterwards that what was signed is exactly the sealed bundle (same resources,
    same root digest as manifest.json); otherwise the signature is removed and SigningError raised.
    """
    model_signing = model_signing_module()
    bundle = Path(bundle)
    key_path = Path(key_path).expanduser()
    key = load_private_key(key_path)  # a clear error before model_signing's
    tmpdir = Path(tempfile.mkdtemp(prefix="prov-sign-"))
    try:
        tmp_sig = tmpdir / "model.sig"
        password = os.environ.get(PASSWORD_ENV)
        secret: Any = password.encode() if password else None  # its key loader needs bytes (hinted as str)
        model_signing.signing.Config().use_elliptic_key_signer(private_key=key_path, password=secret) \
            .set_hashing_config(hashing_config()).sign(bundle, tmp_sig)
        data = tmp_sig.read_bytes()
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    root, problem = compare_with_manifest(bundle, signed_statement(json.loads(data)))
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
    model_signing = model_signing_module()
    bundle = Path(bundle)
    tmpdir = Path(tempfile.mkdtemp(prefix="prov-sign-"))
    try:
        tmp_sig = tmpdir / "model.sigstore.json"
        model_signing.signing.Config().use_sigstore_signer(
            identity_token=identity_token, use_staging=use_staging).set_hashing_config(
            hashing_config()).sign(bundle, tmp_sig)
        data = tmp_sig.read_bytes()
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    root, problem = compare_with_manifest(bundle, signed_statement(json.loads(data)))
    if problem is not None:
        raise SigningError(f"{bundle}: {problem}; the bundle was not signed")
    formats.atomic_write_bytes(bundle / formats.SIGSTORE_SIGNATURE, data)
    return {"signature": formats.SIGSTORE_SIGNATURE, "root_digest": root, "kind": "sigstore",
            "identity": sigstore_identity(json.loads(data)).get("identity")}


# verification functions re-exported from provenance.verify (older imports keep working)
__all__ = ["DEFAULT_KEY_DIR", "KEY_NAME", "PASSWORD_ENV", "PUBLIC_KEY_NAME", "SIGSTORE_BUNDLE_MEDIA_TYPE",
           "SigningError", "check_trust", "dsse_sign", "dsse_verify", "fingerprint", "generate_key",
           "load_private_key", "load_public_key", "pae", "public_pem", "sign_bundle", "sign_bundle_sigstore",
           "trusting", "verify_command", "verify_signature", "verify_slsa", "verify_statement_envelope"]

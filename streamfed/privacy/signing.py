"""Ed25519 signatures over an update's canonical header and the SHA-256 of its parameters."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from streamfed.errors import ConfigError, SignatureError

SIGNED_FIELDS = (
    "topology",
    "model",
    "site_id",
    "sequence",
    "base_version",
    "created_ms",
    "num_examples",
    "num_params",
    "clip_norm",
    "noise_std",
    "epsilon_spent",
    "delta",
    "first_event_ms",
    "key_id",
)
DOMAIN = b"streamfed.update.v1\n"


def canonical_message(update: Mapping[str, Any]) -> bytes:
    header = {k: update[k] for k in SIGNED_FIELDS}
    header["params_sha256"] = hashlib.sha256(update["params"]).hexdigest()
    return DOMAIN + json.dumps(header, sort_keys=True, separators=(",", ":")).encode()


def _raw(pub: Ed25519PublicKey) -> bytes:
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(pub: Ed25519PublicKey) -> str:
    return hashlib.sha256(_raw(pub)).hexdigest()[:16]


def generate_keypair() -> tuple[bytes, bytes]:
    """(private PEM, public PEM) of a new Ed25519 key."""
    priv = Ed25519PrivateKey.generate()
    priv_pem = priv.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pub_pem = priv.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return priv_pem, pub_pem


def write_keypair(private_path: Path, public_path: Path, overwrite: bool = False) -> bool:
    """Write a new key pair unless one exists; returns whether a pair was written."""
    if private_path.exists() and public_path.exists() and not overwrite:
        return False
    priv, pub = generate_keypair()
    private_path.parent.mkdir(parents=True, exist_ok=True)
    public_path.parent.mkdir(parents=True, exist_ok=True)
    private_path.write_bytes(priv)
    private_path.chmod(0o600)
    public_path.write_bytes(pub)
    return True


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the Ed25519 private key {path}: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path} is not an Ed25519 private key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the Ed25519 public key {path}: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{path} is not an Ed25519 public key")
    return key


class SiteSigner:
    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        self.key_id = key_id(key.public_key())

    def sign(self, update: dict[str, Any]) -> dict[str, Any]:
        """Set ``key_id`` and ``signature`` on ``update`` (in place) and return it."""
        update["key_id"] = self.key_id
        update["signature"] = self._key.sign(canonical_message(update))
        return update


class UpdateVerifier:
    """Public keys per site; an update verifies only against a key registered for its own site."""

    def __init__(self, keys: Mapping[str, Iterable[Ed25519PublicKey]]) -> None:
        self._keys: dict[str, dict[str, Ed25519PublicKey]] = {
            site: {key_id(k): k for k in ks} for site, ks in keys.items()
        }

    def verify(self, update: Mapping[str, Any]) -> None:
        site = update["site_id"]
        keys = self._keys.get(site)
        if keys is None:
            raise SignatureError(f'unknown site "{site}"; known: {", ".join(sorted(self._keys))}')
        key = keys.get(update["key_id"])
        if key is None:
            raise SignatureError(f'key {update["key_id"]} is not registered for site "{site}"')
        try:
            key.verify(update["signature"], canonical_message(update))
        except InvalidSignature as exc:
            raise SignatureError(f"bad signature on update {site}#{update['sequence']}") from exc

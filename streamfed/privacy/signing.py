"""Ed25519 signatures over an update's canonical header and the SHA-256 of its parameters."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
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
    "cpu_seconds",
    "gpu_seconds",
    "gpu_energy_joules",
    "mechanism",
    "noise_multiplier",
    "steps",
    "sampling_rate",
    "key_id",
)
DOMAIN = b"streamfed.update.v2\n"
log = logging.getLogger(__name__)


def sequence_space(site_id: str, worker: str = "") -> str:
    """Where a site's update sequence numbers count from: the site, or one worker of it
    (``site/worker``; site ids have no ``/``)."""
    return f"{site_id}/{worker}" if worker else site_id


def bytes_map_digest(values: Mapping[str, bytes]) -> str:
    """SHA-256 of a ``str -> bytes`` map, independent of its order."""
    h = hashlib.sha256()
    for k in sorted(values):
        h.update(hashlib.sha256(k.encode()).digest() + hashlib.sha256(values[k]).digest())
    return h.hexdigest()


def canonical_message(update: Mapping[str, Any]) -> bytes:
    header = {k: update[k] for k in SIGNED_FIELDS}
    header["params_sha256"] = hashlib.sha256(update["params"]).hexdigest()
    # Secure aggregation: the buffer and the encrypted self-mask shares are signed too.
    header["secure_buffer"] = update.get("secure_buffer")
    header["self_mask_shares_sha256"] = bytes_map_digest(update.get("self_mask_shares") or {})
    # A site's worker names its sequence space; signed when set (updates of a site run as one process
    # sign what they always signed), so a worker's update cannot be replayed as another's.
    if update.get("worker"):
        header["worker"] = update["worker"]
    return DOMAIN + json.dumps(header, sort_keys=True, separators=(",", ":")).encode()


def _raw(pub: Ed25519PublicKey) -> bytes:
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(pub: Ed25519PublicKey) -> str:
    return hashlib.sha256(_raw(pub)).hexdigest()[:16]


def pem_pair(priv: Any) -> tuple[bytes, bytes]:
    """(private PEM, public PEM) of a private key object (Ed25519 or X25519)."""
    priv_pem = priv.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pub_pem = priv.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return priv_pem, pub_pem


def generate_keypair() -> tuple[bytes, bytes]:
    """(private PEM, public PEM) of a new Ed25519 key."""
    return pem_pair(Ed25519PrivateKey.generate())


def write_keypair(
    private_path: Path,
    public_path: Path,
    overwrite: bool = False,
    generate: Callable[[], tuple[bytes, bytes]] = generate_keypair,
) -> bool:
    """Write a new key pair (PEM, from ``generate``) unless one exists; returns whether one was written."""
    if private_path.exists() and public_path.exists() and not overwrite:
        return False
    priv, pub = generate()
    private_path.parent.mkdir(parents=True, exist_ok=True)
    public_path.parent.mkdir(parents=True, exist_ok=True)
    private_path.write_bytes(priv)
    private_path.chmod(0o600)
    public_path.write_bytes(pub)
    return True


def load_pem_key(path: Path, kind: Any, what: str, hint: str = "") -> Any:
    """The PEM key in ``path`` (private or public, as ``kind`` says), or a ConfigError naming it."""
    private = "Private" in kind.__name__
    try:
        data = path.read_bytes()
        key = (
            serialization.load_pem_private_key(data, password=None)
            if private
            else serialization.load_pem_public_key(data)
        )
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the {what} {path}: {exc}{hint}") from exc
    if not isinstance(key, kind):
        raise ConfigError(f"{path} is not an {what}")
    return key


def load_private_key(path: Path) -> Ed25519PrivateKey:
    return load_pem_key(path, Ed25519PrivateKey, "Ed25519 private key")


def load_public_key(path: Path) -> Ed25519PublicKey:
    return load_pem_key(path, Ed25519PublicKey, "Ed25519 public key")


class SiteSigner:
    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        self.key_id = key_id(key.public_key())

    def sign(self, update: dict[str, Any]) -> dict[str, Any]:
        """Set ``key_id`` and ``signature`` on ``update`` (in place) and return it."""
        update["key_id"] = self.key_id
        update["signature"] = self._key.sign(canonical_message(update))
        return update

    def sign_bytes(self, message: bytes) -> tuple[str, bytes]:
        """``(key_id, signature)`` over any other message of this site (secure-aggregation reveals)."""
        return self.key_id, self._key.sign(message)


class FileSigner(SiteSigner):
    """Signs with the key in ``path`` and picks up a rotated key file without a restart."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._mtime = path.stat().st_mtime_ns if path.exists() else 0
        super().__init__(load_private_key(path))

    def _reload(self) -> None:
        mtime = self.path.stat().st_mtime_ns
        if mtime != self._mtime:
            key = load_private_key(self.path)
            self._key, self.key_id, self._mtime = key, key_id(key.public_key()), mtime
            log.info("signing key %s reloaded from %s", self.key_id, self.path)

    def sign(self, update: dict[str, Any]) -> dict[str, Any]:
        self._reload()
        return super().sign(update)

    def sign_bytes(self, message: bytes) -> tuple[str, bytes]:
        self._reload()
        return super().sign_bytes(message)


class UpdateVerifier:
    """Public keys per site; an update verifies only against a key registered for its own site.

    ``expiring`` keys are accepted only until their deadline (Unix seconds): the grace window of a
    key rotation.
    """

    def __init__(
        self,
        keys: Mapping[str, Iterable[Ed25519PublicKey]],
        expiring: Mapping[str, Iterable[tuple[Ed25519PublicKey, float]]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._keys: dict[str, dict[str, Ed25519PublicKey]] = {
            site: {key_id(k): k for k in ks} for site, ks in keys.items()
        }
        self._until: dict[str, float] = {}
        for site, pairs in (expiring or {}).items():
            for k, until in pairs:
                kid = key_id(k)
                if kid not in self._keys.setdefault(site, {}):
                    self._keys[site][kid] = k
                    self._until[kid] = until
        self.clock = clock

    def sites(self) -> list[str]:
        return sorted(self._keys)

    def verify(self, update: Mapping[str, Any]) -> None:
        site = update["site_id"]
        what = f"update {site}#{update['sequence']}"
        self.verify_bytes(site, update["key_id"], canonical_message(update), update["signature"], what)

    def verify_bytes(self, site: str, kid: str, message: bytes, signature: bytes, what: str = "message") -> None:
        """Check ``signature`` over ``message`` against a key registered (and not expired) for ``site``."""
        self._refresh()
        keys = self._keys.get(site)
        if keys is None:
            raise SignatureError(f'unknown site "{site}"; known: {", ".join(sorted(self._keys))}')
        key = keys.get(kid)
        if key is None:
            raise SignatureError(f'key {kid} is not registered for site "{site}"')
        until = self._until.get(kid)
        if until is not None and self.clock() > until:
            raise SignatureError(f'key {kid} of site "{site}" was rotated out (grace ended)')
        try:
            key.verify(signature, message)
        except InvalidSignature as exc:
            raise SignatureError(f"bad signature on {what}") from exc

    def _refresh(self) -> None:
        """Subclasses reload keys here."""


def previous_keys_path(public_key: Path) -> Path:
    """Where a rotation records the keys still accepted during their grace window."""
    return public_key.with_name(public_key.name + ".previous.json")


def rotate_keypair(private_path: Path, public_path: Path, grace_s: float, now: float | None = None) -> str:
    """Replace a site's key pair; the old public key stays valid for ``grace_s`` seconds.

    Returns the new key id. The old public key goes into ``<pub>.previous.json`` with its deadline;
    entries whose grace ended are dropped.
    """
    now = time.time() if now is None else now
    old_pub = load_public_key(public_path)
    record = previous_keys_path(public_path)
    entries = json.loads(record.read_text()) if record.exists() else []
    entries = [e for e in entries if e["valid_until"] > now]
    entries.append({"key_id": key_id(old_pub), "public_key": public_path.read_text(), "valid_until": now + grace_s})
    tmp = record.with_name(record.name + ".tmp")
    tmp.write_text(json.dumps(entries, indent=1))
    tmp.replace(record)
    write_keypair(private_path, public_path, overwrite=True)
    return key_id(load_public_key(public_path))


class FileKeyring(UpdateVerifier):
    """Keys read from files (current ``.pub`` plus ``.pub.previous.json``), reloaded when they change."""

    def __init__(self, paths: Mapping[str, Path], clock: Callable[[], float] = time.time, every_s: float = 2.0) -> None:
        self.paths = dict(paths)
        self.every_s = every_s
        self._checked = 0.0
        self._stamp: tuple[int, ...] = ()
        super().__init__({}, clock=clock)
        self._load()

    def _files(self) -> list[Path]:
        return [p for path in self.paths.values() for p in (path, previous_keys_path(path))]

    def _load(self) -> None:
        current = {site: [load_public_key(p)] for site, p in self.paths.items()}
        expiring: dict[str, list[tuple[Ed25519PublicKey, float]]] = {}
        for site, p in self.paths.items():
            prev = previous_keys_path(p)
            if prev.exists():
                for e in json.loads(prev.read_text()):
                    key = serialization.load_pem_public_key(e["public_key"].encode())
                    if isinstance(key, Ed25519PublicKey):
                        expiring.setdefault(site, []).append((key, float(e["valid_until"])))
        fresh = UpdateVerifier(current, expiring, self.clock)
        self._keys, self._until = fresh._keys, fresh._until
        self._stamp = tuple(f.stat().st_mtime_ns if f.exists() else 0 for f in self._files())

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked < self.every_s:
            return
        self._checked = now
        stamp = tuple(f.stat().st_mtime_ns if f.exists() else 0 for f in self._files())
        if stamp != self._stamp:
            self._load()
            log.info("site public keys reloaded")

"""Ed25519 signing of updates: key files, sign/verify, and every kind of tampering."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streamfed.errors import ConfigError, SignatureError
from streamfed.privacy.signing import (
    SIGNED_FIELDS,
    SiteSigner,
    UpdateVerifier,
    canonical_message,
    key_id,
    load_private_key,
    load_public_key,
    write_keypair,
)


def _update(site: str = "bank-a", seq: int = 1) -> dict[str, Any]:
    return {
        "topology": "fraud",
        "model": "fraud-detector",
        "site_id": site,
        "sequence": seq,
        "base_version": 2,
        "created_ms": 1_700_000_000_000,
        "num_examples": 500,
        "num_params": 4,
        "params": np.array([0.1, -0.2, 0.3, 0.0], dtype="<f4").tobytes(),
        "clip_norm": 1.0,
        "noise_std": 1.95,
        "epsilon_spent": 4.2,
        "delta": 1e-6,
        "first_event_ms": 1_699_999_990_000,
        "cpu_seconds": 0.5,
        "gpu_seconds": 0.0,
        "gpu_energy_joules": None,
        "mechanism": "window_sum",
        "noise_multiplier": 1.0,
        "steps": 1,
        "sampling_rate": 1.0,
    }


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, tuple[Path, Path]]:
    out = {}
    for site in ("bank-a", "bank-b"):
        priv, pub = tmp_path / "keys" / f"{site}.key", tmp_path / "keys" / f"{site}.pub"
        assert write_keypair(priv, pub) is True
        out[site] = (priv, pub)
    return out


@pytest.fixture
def verifier(keys: dict[str, tuple[Path, Path]]) -> UpdateVerifier:
    return UpdateVerifier({site: [load_public_key(pub)] for site, (_, pub) in keys.items()})


def _signer(keys: dict[str, tuple[Path, Path]], site: str) -> SiteSigner:
    return SiteSigner(load_private_key(keys[site][0]))


def test_keypair_files(keys: dict[str, tuple[Path, Path]]) -> None:
    priv, pub = keys["bank-a"]
    assert priv.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert pub.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    signer = _signer(keys, "bank-a")
    assert signer.key_id == key_id(load_public_key(pub))
    assert len(signer.key_id) == 16
    assert signer.key_id != _signer(keys, "bank-b").key_id


def test_write_keypair_keeps_an_existing_pair_unless_told(keys: dict[str, tuple[Path, Path]]) -> None:
    priv, pub = keys["bank-a"]
    old_priv, old_pub = priv.read_bytes(), pub.read_bytes()
    assert write_keypair(priv, pub) is False
    assert (priv.read_bytes(), pub.read_bytes()) == (old_priv, old_pub)
    assert write_keypair(priv, pub, overwrite=True) is True
    assert priv.read_bytes() != old_priv and pub.read_bytes() != old_pub
    # the new pair belongs together
    assert key_id(load_private_key(priv).public_key()) == key_id(load_public_key(pub))


@pytest.mark.parametrize("loader", [load_private_key, load_public_key])
def test_loading_a_missing_or_foreign_key_is_a_config_error(tmp_path: Path, loader: Any) -> None:
    with pytest.raises(ConfigError, match=r"absent\.pem"):
        loader(tmp_path / "absent.pem")
    junk = tmp_path / "junk.pem"
    junk.write_text("not a key")
    with pytest.raises(ConfigError, match=r"junk\.pem"):
        loader(junk)


def test_sign_then_verify(keys: dict[str, tuple[Path, Path]], verifier: UpdateVerifier) -> None:
    signer = _signer(keys, "bank-a")
    upd = _update()
    out = signer.sign(upd)
    assert out is upd
    assert upd["key_id"] == signer.key_id
    assert isinstance(upd["signature"], bytes) and len(upd["signature"]) == 64
    verifier.verify(upd)  # does not raise
    verifier.verify(_signer(keys, "bank-b").sign(_update("bank-b")))
    assert verifier.sites() == ["bank-a", "bank-b"]


def _tampered(value: Any) -> Any:
    if value is None:
        return 1.0
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, int):
        return value + 1
    return value + 0.5


# Every field of the update except params (covered by its hash) and the signature itself.
HEADER_FIELDS = [*_update(), "key_id"]
HEADER_FIELDS.remove("params")


def test_the_whole_header_is_signed() -> None:
    assert sorted(SIGNED_FIELDS) == sorted(HEADER_FIELDS)


@pytest.mark.parametrize("field", HEADER_FIELDS)
def test_tampering_with_a_signed_field_fails(
    keys: dict[str, tuple[Path, Path]], verifier: UpdateVerifier, field: str
) -> None:
    upd = _signer(keys, "bank-a").sign(_update())
    upd[field] = _tampered(upd[field])
    with pytest.raises(SignatureError):
        verifier.verify(upd)


@pytest.mark.parametrize("where", [0, 7, 15])
def test_tampering_with_params_fails(keys: dict[str, tuple[Path, Path]], verifier: UpdateVerifier, where: int) -> None:
    upd = _signer(keys, "bank-a").sign(_update())
    blob = bytearray(upd["params"])
    blob[where] ^= 0x01
    upd["params"] = bytes(blob)
    with pytest.raises(SignatureError, match="bad signature"):
        verifier.verify(upd)


def test_tampering_with_the_signature_fails(keys: dict[str, tuple[Path, Path]], verifier: UpdateVerifier) -> None:
    upd = _signer(keys, "bank-a").sign(_update())
    sig = bytearray(upd["signature"])
    sig[10] ^= 0x80
    upd["signature"] = bytes(sig)
    with pytest.raises(SignatureError, match="bad signature"):
        verifier.verify(upd)


def test_a_key_of_another_site_fails(keys: dict[str, tuple[Path, Path]], verifier: UpdateVerifier) -> None:
    # bank-b signs an update claiming to be bank-a: its key is registered, but not for bank-a
    upd = _signer(keys, "bank-b").sign(_update("bank-a"))
    with pytest.raises(SignatureError, match='not registered for site "bank-a"'):
        verifier.verify(upd)


def test_a_forger_reusing_the_right_key_id_fails(keys: dict[str, tuple[Path, Path]], verifier: UpdateVerifier) -> None:
    upd = _signer(keys, "bank-b").sign(_update("bank-a"))
    upd["key_id"] = _signer(keys, "bank-a").key_id
    with pytest.raises(SignatureError, match="bad signature"):
        verifier.verify(upd)


def test_an_unknown_site_fails(tmp_path: Path, verifier: UpdateVerifier) -> None:
    write_keypair(tmp_path / "m.key", tmp_path / "m.pub")
    upd = SiteSigner(load_private_key(tmp_path / "m.key")).sign(_update("mallory"))
    with pytest.raises(SignatureError, match='unknown site "mallory"; known: bank-a, bank-b'):
        verifier.verify(upd)


def test_canonical_message_covers_exactly_the_signed_fields_and_params() -> None:
    upd = {**_update(), "key_id": "k"}
    base = canonical_message(upd)
    assert base.startswith(b"streamfed.update.v2\n")
    # a field outside the signed header does not change the message
    assert canonical_message({**upd, "signature": b"zz", "extra": 1}) == base
    for field in HEADER_FIELDS:
        assert canonical_message({**upd, field: _tampered(upd[field])}) != base, field
    assert canonical_message({**upd, "params": upd["params"] + b"\x00" * 4}) != base

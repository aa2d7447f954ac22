"""Key rotation: old and new keys both verify during the grace window, only the new one after."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from streamfed.errors import SignatureError
from streamfed.privacy.signing import (
    FileKeyring,
    FileSigner,
    SiteSigner,
    load_private_key,
    rotate_keypair,
    write_keypair,
)


def _update(seq: int) -> dict:
    return {
        "topology": "t",
        "model": "m",
        "site_id": "a",
        "sequence": seq,
        "base_version": 0,
        "created_ms": 1,
        "num_examples": 5,
        "num_params": 2,
        "params": b"\x00" * 8,
        "clip_norm": 1.0,
        "noise_std": 1.0,
        "epsilon_spent": 0.5,
        "delta": 1e-6,
        "first_event_ms": 1,
        "cpu_seconds": 0.1,
        "gpu_seconds": 0.0,
        "gpu_energy_joules": None,
        "mechanism": "window_sum",
        "noise_multiplier": 1.0,
        "steps": 1,
        "sampling_rate": 1.0,
    }


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def test_rotation_with_grace_window(tmp_path: Path) -> None:
    priv, pub = tmp_path / "a.key", tmp_path / "a.pub"
    write_keypair(priv, pub)
    clock = Clock()
    ring = FileKeyring({"a": pub}, clock=clock, every_s=0.0)
    signer = FileSigner(priv)
    old = SiteSigner(load_private_key(priv))
    ring.verify(signer.sign(_update(1)))
    old_id = signer.key_id

    new_id = rotate_keypair(priv, pub, grace_s=60.0, now=clock.now)
    os.utime(priv, ns=(1, 1))  # make sure the signer sees a new modification time
    assert new_id != old_id
    fresh = signer.sign(_update(2))
    assert fresh["key_id"] == new_id
    ring.verify(fresh)
    ring.verify(old.sign(_update(3)))  # in the grace window

    clock.now += 61.0
    with pytest.raises(SignatureError, match="rotated out"):
        ring.verify(old.sign(_update(4)))
    ring.verify(signer.sign(_update(5)))

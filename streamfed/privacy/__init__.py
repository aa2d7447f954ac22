"""Pure privacy mechanisms (rng injected), the dp-accounting ledger, and Ed25519 signing."""

from streamfed.privacy.accountant import (
    Calibration,
    Mechanism,
    PrivacyLedger,
    Release,
    calibrate,
    epsilon,
    resolve,
    resolve_noise_multiplier,
)
from streamfed.privacy.mechanisms import add_gaussian_noise, clip_l2, csprng
from streamfed.privacy.signing import (
    FileKeyring,
    FileSigner,
    SiteSigner,
    UpdateVerifier,
    generate_keypair,
    key_id,
    load_private_key,
    load_public_key,
    rotate_keypair,
    write_keypair,
)

__all__ = [
    "Calibration",
    "FileKeyring",
    "FileSigner",
    "Mechanism",
    "PrivacyLedger",
    "Release",
    "SiteSigner",
    "UpdateVerifier",
    "add_gaussian_noise",
    "calibrate",
    "clip_l2",
    "csprng",
    "epsilon",
    "generate_keypair",
    "key_id",
    "load_private_key",
    "load_public_key",
    "resolve",
    "resolve_noise_multiplier",
    "rotate_keypair",
    "write_keypair",
]

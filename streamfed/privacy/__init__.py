"""Pure privacy mechanisms (rng injected), the dp-accounting ledger, and Ed25519 signing."""

from streamfed.privacy.accountant import (
    PrivacyLedger,
    calibrate_noise_multiplier,
    epsilon_for,
    resolve_noise_multiplier,
)
from streamfed.privacy.mechanisms import add_gaussian_noise, clip_l2, clip_segments, csprng
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
    "FileKeyring",
    "FileSigner",
    "PrivacyLedger",
    "SiteSigner",
    "UpdateVerifier",
    "add_gaussian_noise",
    "calibrate_noise_multiplier",
    "clip_l2",
    "clip_segments",
    "csprng",
    "epsilon_for",
    "generate_keypair",
    "key_id",
    "load_private_key",
    "load_public_key",
    "resolve_noise_multiplier",
    "rotate_keypair",
    "write_keypair",
]

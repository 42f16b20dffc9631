"""The key types `sitelink pki` makes, by name only: the CLI lists them without loading cryptography
(keepalived's notify scripts run `sitelink role`, whose start-up time is part of a failover)."""

KEY_TYPES: tuple[str, ...] = ("ecdsa-p256", "ecdsa-p384", "rsa-2048", "rsa-3072")

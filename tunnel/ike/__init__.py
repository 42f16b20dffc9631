"""Pure IKEv2 (RFC 7296): messages, crypto, exchanges and sessions. No I/O, no clock, no global RNG."""

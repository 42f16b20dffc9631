"""Pure policy: which packets belong to which tunnel. Stdlib only; imports nothing from tunnel."""

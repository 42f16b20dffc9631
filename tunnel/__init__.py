"""sitelink gateway: ESP tunnels between sites, run in userspace."""

__version__ = "0.1.0"

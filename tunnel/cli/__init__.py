"""The `sitelink` command line."""

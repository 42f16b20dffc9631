"""The application: the composition root and the glue between the cores (keying, workers, reload)."""

"""Experiments: small, single-file research scripts that train models with fnn."""

"""Serving the champion: batch scoring and the HTTP service."""

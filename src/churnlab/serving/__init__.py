"""Serving the champion: batch scoring of files (and the HTTP service beside it)."""

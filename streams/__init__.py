"""Laneway stream processing."""

"""Shared core for the Helicone-class gateway services."""

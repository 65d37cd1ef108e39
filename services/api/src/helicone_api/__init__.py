"""Helicone dashboard/query API."""

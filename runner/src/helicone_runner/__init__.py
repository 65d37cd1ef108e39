"""Runs any set of Helicone services in one process, with embedded infrastructure."""

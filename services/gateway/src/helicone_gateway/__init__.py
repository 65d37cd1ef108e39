"""Helicone gateway: the LLM proxy."""

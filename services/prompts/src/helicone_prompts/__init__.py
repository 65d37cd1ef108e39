"""Helicone prompts: versioned prompt templates over gRPC."""

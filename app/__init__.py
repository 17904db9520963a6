"""Bridgekeeper: a self-hosted LLM API gateway for small teams."""

__version__ = "0.1.0"

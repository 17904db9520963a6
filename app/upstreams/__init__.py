"""Upstream clients (one module per backend kind), the key ring and the echo backend."""

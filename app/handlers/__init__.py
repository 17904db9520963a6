"""Thin Tornado handlers: parse, call the gateway or a db function, write."""

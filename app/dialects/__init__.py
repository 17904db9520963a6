"""Pure wire-dialect modules: validation, errors, SSE framing, usage, model lists.

Nothing here imports Tornado, aiohttp or SQLAlchemy.
"""

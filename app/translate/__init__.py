"""Pure translation between the two dialects: one module per (client -> backend) pair.

Nothing here imports Tornado, aiohttp or SQLAlchemy.
"""

"""Storage: SQLAlchemy models, the engine, and query functions grouped by table."""

"""Persistent state: SQLAlchemy 2 models, repositories, Alembic migrations (SQLite or PostgreSQL)."""

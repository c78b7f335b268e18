"""Alembic migrations of the QFLARE schema."""

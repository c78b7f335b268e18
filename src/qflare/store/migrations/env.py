"""Alembic environment: runs on the connection handed over by :func:`qflare.store.db.migrate`."""

from alembic import context

from qflare.store.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through qflare.store.db.migrate(engine)")
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()

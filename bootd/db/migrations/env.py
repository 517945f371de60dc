"""Alembic environment: bootd always hands over an open connection (engine.migrate)."""

from alembic import context

from bootd.db.schema import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=True,  # SQLite alters tables by copy; batch mode does that on both
    transaction_per_migration=False,
)
with context.begin_transaction():
    context.run_migrations()

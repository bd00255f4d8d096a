"""Alembic environment: migrate over the connection that ``gateway.ledger.migrate`` passes in.

There is no alembic.ini and no URL here: the caller owns the engine and the transaction
(on PostgreSQL it holds an advisory lock so that gateways starting together migrate once).
"""

from __future__ import annotations

from alembic import context

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=None)
with context.begin_transaction():
    context.run_migrations()

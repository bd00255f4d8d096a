"""Alembic migrations of the ledger, run programmatically by ``gateway.ledger.migrate``."""

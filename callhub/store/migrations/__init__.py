"""Alembic migrations, shipped in the package; run them with `callhub db upgrade`."""

"""Storage: tables, migrations, the batched writer, the worklist and queries."""

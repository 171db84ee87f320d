"""The schema's Alembic revisions (versions/), the same for SQLite and PostgreSQL; `bitinglip.core.db` runs them."""

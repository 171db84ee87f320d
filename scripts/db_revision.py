"""Write a new schema revision: Alembic compares every module's tables with a database at today's head and
writes the difference to src/bitinglip/core/migrations/versions/NNNN_<slug>.py. Read it, then test it on both
databases (`pytest tests/unit/core/test_migrations.py`).

    .venv/bin/python scripts/db_revision.py "add the instances table"
"""

from __future__ import annotations

import sys
import tempfile

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

import bitinglip.cluster.tables
import bitinglip.gateway.tables
import bitinglip.models.tables
import bitinglip.tasks.tables  # noqa: F401  (each registers its tables on the metadata)
from bitinglip.core.db import MIGRATIONS, metadata


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    message = sys.argv[1]
    with tempfile.TemporaryDirectory() as tmp:
        engine = sa.create_engine(f"sqlite:///{tmp}/head.db")
        with engine.begin() as connection:
            config = Config()
            config.set_main_option("script_location", str(MIGRATIONS))
            config.attributes["connection"] = connection
            config.attributes["metadata"] = metadata
            command.upgrade(config, "head")
            head = ScriptDirectory.from_config(config).get_current_head()
            number = f"{int(head or 0) + 1:04d}"
            script = command.revision(config, message, autogenerate=True, rev_id=number)
    path = script.path if script is not None and not isinstance(script, list) else "?"
    print(f"wrote {path}: tidy it as the others are, then set HEAD_REVISION = {number!r} in src/bitinglip/core/db.py")


if __name__ == "__main__":
    main()

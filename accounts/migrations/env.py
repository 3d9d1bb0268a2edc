"""Alembic environment for doka accounts: run programmatically by accounts.db.migrate().

The caller hands over an open connection in `config.attributes["connection"]`, so the same
code migrates SQLite and PostgreSQL and no alembic.ini is needed.
"""

from alembic import context

from accounts.models import Base

VERSION_TABLE = "doka_accounts_alembic_version"

config = context.config
connection = config.attributes.get("connection")
if connection is None:  # `alembic` run by hand with -x url=...
    from sqlalchemy import create_engine

    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    connection = create_engine(url).connect()

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    version_table=VERSION_TABLE,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()

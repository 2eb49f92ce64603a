"""Regression's decay: ``checks.rmse`` and ``checks.mae`` (the served predictions' errors on a
window's labelled rows), ``checks.champion_rmse``, ``checks.champion_mae`` and
``checks.champion_squared_error_std`` (on the rows the champion answered: what the decay test looks
at). Nullable: a classifier's checks, and every existing row, have none.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

COLUMNS = ("rmse", "mae", "champion_rmse", "champion_mae", "champion_squared_error_std")


def upgrade() -> None:
    # A database from before migrations is adopted when its tables match the *current* ones
    # (``monitoring.migrations._adopt_legacy``), so it may have some of them already.
    have = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("checks")}
    missing = [name for name in COLUMNS if name not in have]
    if not missing:
        return
    # Nullable columns are a plain ALTER TABLE ... ADD COLUMN on SQLite as well (no table copy).
    with op.batch_alter_table("checks") as batch:
        for name in missing:
            batch.add_column(sa.Column(name, sa.Float, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("checks") as batch:  # SQLite: the table is copied without the columns
        for name in reversed(COLUMNS):
            batch.drop_column(name)

"""``checks.unfamiliar_share``: the share of the champion's rows in a window that lie outside its
training ranges or categories. Where it is small, the champion's calibrated confidence may explain
a lower accuracy (harder rows of a population it learnt); where it is not, the model extrapolates
(monitoring/policy.py). Nullable: every existing row has none.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A database from before migrations is adopted when its tables match the *current* ones
    # (``monitoring.migrations._adopt_legacy``), so it may have the column already.
    if "unfamiliar_share" in {c["name"] for c in sa.inspect(op.get_bind()).get_columns("checks")}:
        return
    with op.batch_alter_table("checks") as batch:  # nullable: a plain ALTER TABLE ... ADD COLUMN
        batch.add_column(sa.Column("unfamiliar_share", sa.Float, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("checks") as batch:  # SQLite: the table is copied without the column
        batch.drop_column("unfamiliar_share")

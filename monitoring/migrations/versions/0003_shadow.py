"""Shadow mode: ``shadow_predictions`` (a shadow version's answer to a logged request that the
champion answered, keyed by version and request id) and ``checks.estimated_accuracy`` (the
monitor's estimate of accuracy where labels are missing; nullable, so existing rows stay valid).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "shadow_predictions",
        sa.Column("request_id", sa.String(36), nullable=False),  # predictions.request_id (no constraint)
        sa.Column("model_version", sa.String(64), nullable=False),  # the shadow's version
        sa.Column("prediction", sa.Text, nullable=False),  # JSON scalar
        sa.Column("confidence", sa.Float, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("model_version", "request_id", name="pk_shadow_predictions"),
    )
    # A database from before migrations is adopted when its tables match the *current* ones
    # (``monitoring.migrations._adopt_legacy``), so it may have the column already.
    if "estimated_accuracy" in {c["name"] for c in sa.inspect(op.get_bind()).get_columns("checks")}:
        return
    # A nullable column is a plain ALTER TABLE ... ADD COLUMN on SQLite as well (no table copy).
    with op.batch_alter_table("checks") as batch:
        batch.add_column(sa.Column("estimated_accuracy", sa.Float, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("checks") as batch:  # SQLite: the table is copied without the column
        batch.drop_column("estimated_accuracy")
    op.drop_table("shadow_predictions")

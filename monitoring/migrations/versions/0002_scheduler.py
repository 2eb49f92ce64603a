"""The scheduler's tables: APScheduler's job store (``apscheduler_jobs``, the layout of
``SQLAlchemyJobStore``) and ``leases``, the rows that keep one scheduler (and one retrain)
active at a time (``monitoring/lease.py``).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "apscheduler_jobs",
        sa.Column("id", sa.Unicode(191), primary_key=True),
        sa.Column("next_run_time", sa.Float(25), nullable=True),
        sa.Column("job_state", sa.LargeBinary, nullable=False),
    )
    op.create_index("ix_apscheduler_jobs_next_run_time", "apscheduler_jobs", ["next_run_time"])
    op.create_table(
        "leases",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("owner", sa.String(128), nullable=True),  # host:pid:nonce of the holder; NULL: free
        sa.Column("epoch", sa.Integer, nullable=False),  # +1 at every change of holder (a fencing token)
        sa.Column("acquired_at", sa.Float, nullable=True),  # epoch seconds, the database's clock
        sa.Column("expires_at", sa.Float, nullable=False),  # the holder must renew before this
    )


def downgrade() -> None:
    op.drop_table("leases")
    op.drop_index("ix_apscheduler_jobs_next_run_time", "apscheduler_jobs")
    op.drop_table("apscheduler_jobs")

"""metric series positions: metrics.seq (rank of the step within its job) + index (job_id, seq)

Existing rows are numbered by step, per job, in one statement.

Revision ID: q1a7c3e9d2f1
Revises: 84b8ddb87b3b
Create Date: 2026-11-27 13:30:00

"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "q1a7c3e9d2f1"
down_revision: Union[str, Sequence[str], None] = "84b8ddb87b3b"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table("metrics", schema=None) as batch_op:
        batch_op.add_column(sa.Column("seq", sa.Integer(), nullable=True))
    # UPDATE ... FROM works on PostgreSQL and SQLite >= 3.33.
    op.execute(
        "UPDATE metrics SET seq = ranked.rn FROM ("
        " SELECT job_id, step, row_number() OVER (PARTITION BY job_id ORDER BY step) - 1 AS rn FROM metrics"
        ") AS ranked WHERE metrics.job_id = ranked.job_id AND metrics.step = ranked.step"
    )
    with op.batch_alter_table("metrics", schema=None) as batch_op:
        batch_op.alter_column("seq", existing_type=sa.Integer(), nullable=False)
        batch_op.create_index("ix_metrics_job_seq", ["job_id", "seq"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("metrics", schema=None) as batch_op:
        batch_op.drop_index("ix_metrics_job_seq")
        batch_op.drop_column("seq")

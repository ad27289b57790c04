"""jobs: the fit plan (memory placement), and the GPU kind + throughput a run measured

Revision ID: g1f7a2b3c4d5
Revises: s1f11e5e4a01
Create Date: 2026-11-28 10:00:00

"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "g1f7a2b3c4d5"
down_revision: Union[str, Sequence[str], None] = "s1f11e5e4a01"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("plan", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("planned_gpu_memory_gb", sa.Float(), nullable=True))
        batch.add_column(sa.Column("gpu_name", sa.String(200), nullable=True))
        batch.add_column(sa.Column("tokens_per_second", sa.Float(), nullable=True))
    op.create_index("ix_jobs_throughput", "jobs", ["model", "gpu_name", "finished_at"])


def downgrade() -> None:
    op.drop_index("ix_jobs_throughput", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("tokens_per_second")
        batch.drop_column("gpu_name")
        batch.drop_column("planned_gpu_memory_gb")
        batch.drop_column("plan")

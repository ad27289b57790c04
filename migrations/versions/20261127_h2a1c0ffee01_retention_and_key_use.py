"""retention policy per team (checkpoints kept after a job ends) and api_keys.last_used_at

Revision ID: h2a1c0ffee01
Revises: 84b8ddb87b3b
Create Date: 2026-11-27 13:30:00

"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "h2a1c0ffee01"
down_revision: Union[str, Sequence[str], None] = "84b8ddb87b3b"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table("teams") as batch:
        batch.add_column(sa.Column("keep_checkpoints", sa.Integer(), server_default="2", nullable=False))
        batch.add_column(sa.Column("keep_best_checkpoint", sa.Boolean(), server_default=sa.true(), nullable=False))
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("last_used_at")
    with op.batch_alter_table("teams") as batch:
        batch.drop_column("keep_best_checkpoint")
        batch.drop_column("keep_checkpoints")

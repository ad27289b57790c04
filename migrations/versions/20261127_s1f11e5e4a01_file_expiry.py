"""files.expires_at: OpenAI's `expires_after` on upload (files expire and are deleted)

Revision ID: s1f11e5e4a01
Revises: m1e2a3b4c5d6
Create Date: 2026-11-27 14:30:00

"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "s1f11e5e4a01"
down_revision: Union[str, Sequence[str], None] = "m1e2a3b4c5d6"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table("files") as batch:
        batch.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("files") as batch:
        batch.drop_column("expires_at")

"""pool at scale: maintained slot counts (workers.used_slots, jobs.held_*), the team_usage
rollup, planner-written queue columns, and the head-of-line / held-slot indexes (issue 9)

Revision ID: p1a9c3e5d7f1
Revises: 84b8ddb87b3b
Create Date: 2026-11-27 13:40:00

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = 'p1a9c3e5d7f1'
down_revision: Union[str, Sequence[str], None] = '84b8ddb87b3b'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table('team_usage',
    sa.Column('team_id', sa.String(length=40), nullable=False),
    sa.Column('bucket', sa.DateTime(timezone=True), nullable=False),
    sa.Column('slot_seconds', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['team_id'], ['teams.id'], name=op.f('fk_team_usage_team_id_teams'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('team_id', 'bucket', name=op.f('pk_team_usage'))
    )
    with op.batch_alter_table('workers', schema=None) as batch_op:
        batch_op.add_column(sa.Column('used_slots', sa.Integer(), server_default='0', nullable=False))
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('held_worker_id', sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column('held_slots', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('queue_position', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('queue_reason', sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column('estimated_start', sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index('ix_jobs_waiting_head', ['team_id', 'status', sa.column('priority').desc(), 'created_at', 'id'],
                              unique=False, postgresql_where=sa.text('worker_id IS NULL'), sqlite_where=sa.text('worker_id IS NULL'))
        batch_op.create_index('ix_jobs_held', ['held_worker_id'], unique=False,
                              postgresql_where=sa.text('held_worker_id IS NOT NULL'), sqlite_where=sa.text('held_worker_id IS NOT NULL'))
        batch_op.create_index('ix_jobs_finished_at', ['finished_at'], unique=False)
    # Jobs already holding a slot when this runs: count them once.
    op.execute("UPDATE jobs SET held_worker_id = worker_id, held_slots = CASE WHEN gpus > 1 THEN gpus ELSE 1 END "
               "WHERE worker_id IS NOT NULL AND status IN ('queued', 'running', 'pausing', 'cancelling')")
    op.execute("UPDATE workers SET used_slots = (SELECT COALESCE(SUM(held_slots), 0) FROM jobs WHERE jobs.held_worker_id = workers.id)")


def downgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index('ix_jobs_finished_at')
        batch_op.drop_index('ix_jobs_held', postgresql_where=sa.text('held_worker_id IS NOT NULL'), sqlite_where=sa.text('held_worker_id IS NOT NULL'))
        batch_op.drop_index('ix_jobs_waiting_head', postgresql_where=sa.text('worker_id IS NULL'), sqlite_where=sa.text('worker_id IS NULL'))
        batch_op.drop_column('estimated_start')
        batch_op.drop_column('queue_reason')
        batch_op.drop_column('queue_position')
        batch_op.drop_column('held_slots')
        batch_op.drop_column('held_worker_id')
    with op.batch_alter_table('workers', schema=None) as batch_op:
        batch_op.drop_column('used_slots')
    op.drop_table('team_usage')

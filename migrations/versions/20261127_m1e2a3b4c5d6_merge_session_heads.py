"""Merge the four revisions written side by side this session (retention and key use,
webhooks and result files, pool at scale, metric series positions): they touch different
columns and tables, so they apply in any order; this revision makes them one head again.

Revision ID: m1e2a3b4c5d6
Revises: h2a1c0ffee01, o1a7c3e9d2f1, p1a9c3e5d7f1, q1a7c3e9d2f1
Create Date: 2026-11-27
"""

from __future__ import annotations

revision = "m1e2a3b4c5d6"
down_revision = ("h2a1c0ffee01", "o1a7c3e9d2f1", "p1a9c3e5d7f1", "q1a7c3e9d2f1")
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass

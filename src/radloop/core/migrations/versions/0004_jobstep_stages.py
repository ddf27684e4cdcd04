"""job step stage timings

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06 19:40:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # jobstep.stages: stage name → seconds, in the order the operator entered its stages
    with op.batch_alter_table('jobstep', schema=None) as batch_op:
        batch_op.add_column(sa.Column('stages', sa.JSON(), server_default='{}', nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('jobstep', schema=None) as batch_op:
        batch_op.drop_column('stages')

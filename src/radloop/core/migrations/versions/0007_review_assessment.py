"""review.assessment_result_id: the AIRA assessment SR each decision became

Revision ID: 0007
Revises: 0004
Create Date: 2026-12-06 20:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # the result row of the assessment SR (IHE AIRA) written for this decision; null before 0007
    with op.batch_alter_table('review', schema=None) as batch_op:
        batch_op.add_column(sa.Column('assessment_result_id', sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            'fk_review_assessment_result_id_result', 'result', ['assessment_result_id'], ['id']
        )


def downgrade() -> None:
    with op.batch_alter_table('review', schema=None) as batch_op:
        batch_op.drop_constraint('fk_review_assessment_result_id_result', type_='foreignkey')
        batch_op.drop_column('assessment_result_id')

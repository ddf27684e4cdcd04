"""UPS workitems (AI worklist): workitem, workitem_job, workitem_subscription, workitem_event

Revision ID: 0008
Revises: 0004
Create Date: 2026-12-06 20:20:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'workitem',
        sa.Column('sop_instance_uid', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column('procedure_step_state', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column('updated_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column('cancel_requested_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('dataset', sa.JSON(), server_default='{}', nullable=False),
        sa.Column('transaction_uid', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column('claimed_by', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index(op.f('ix_workitem_sop_instance_uid'), 'workitem', ['sop_instance_uid'], unique=True)
    op.create_index(op.f('ix_workitem_procedure_step_state'), 'workitem', ['procedure_step_state'], unique=False)
    op.create_table(
        'workitem_job',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('workitem_id', sa.Integer(), nullable=False),
        sa.Column('job_id', sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(['job_id'], ['job.id']),
        sa.ForeignKeyConstraint(['workitem_id'], ['workitem.id']),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('job_id'),
    )
    op.create_index(op.f('ix_workitem_job_workitem_id'), 'workitem_job', ['workitem_id'], unique=False)
    op.create_table(
        'workitem_subscription',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('ae_title', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column('workitem_uid', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column('deletion_lock', sa.Boolean(), nullable=False),
        sa.Column('from_event_id', sa.Integer(), nullable=False),
        sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('ae_title', 'workitem_uid'),
    )
    op.create_index(op.f('ix_workitem_subscription_ae_title'), 'workitem_subscription', ['ae_title'], unique=False)
    op.create_table(
        'workitem_event',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('workitem_uid', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column('event_type_id', sa.Integer(), nullable=False),
        sa.Column('report', sa.JSON(), server_default='{}', nullable=False),
        sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index(op.f('ix_workitem_event_workitem_uid'), 'workitem_event', ['workitem_uid'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_workitem_event_workitem_uid'), table_name='workitem_event')
    op.drop_table('workitem_event')
    op.drop_index(op.f('ix_workitem_subscription_ae_title'), table_name='workitem_subscription')
    op.drop_table('workitem_subscription')
    op.drop_index(op.f('ix_workitem_job_workitem_id'), table_name='workitem_job')
    op.drop_table('workitem_job')
    op.drop_index(op.f('ix_workitem_procedure_step_state'), table_name='workitem')
    op.drop_index(op.f('ix_workitem_sop_instance_uid'), table_name='workitem')
    op.drop_table('workitem')

"""audit_message: DICOM audit messages (IHE ATNA), the local trail and the queue to the repository

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 23:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_message",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("event_id", sa.String(), nullable=False),
        sa.Column("event_action", sa.String(), nullable=False),
        sa.Column("outcome", sa.Integer(), nullable=False),
        sa.Column("user", sa.String(), nullable=False),
        sa.Column("patient_id", sa.String(), nullable=False),
        sa.Column("study_instance_uid", sa.String(), nullable=False),
        sa.Column("sent_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), server_default="", nullable=False),
        sa.Column("xml", sa.Text(), nullable=False),
        sa.Column("pending", sa.Boolean(), nullable=False),
        sa.Column("next_attempt_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_audit_message_at", "audit_message", ["at"])
    op.create_index("ix_audit_message_event_id", "audit_message", ["event_id"])
    op.create_index("ix_audit_message_user", "audit_message", ["user"])
    op.create_index("ix_audit_message_patient_id", "audit_message", ["patient_id"])
    op.create_index("ix_audit_message_pending", "audit_message", ["pending"])


def downgrade() -> None:
    op.drop_index("ix_audit_message_pending", table_name="audit_message")
    op.drop_index("ix_audit_message_patient_id", table_name="audit_message")
    op.drop_index("ix_audit_message_user", table_name="audit_message")
    op.drop_index("ix_audit_message_event_id", table_name="audit_message")
    op.drop_index("ix_audit_message_at", table_name="audit_message")
    op.drop_table("audit_message")

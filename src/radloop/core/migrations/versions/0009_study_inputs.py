"""study-level pipelines: study_trigger and job_input

Revision ID: 0009
Revises: 0004
Create Date: 2026-12-06 20:20:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # study_trigger: what each study-level pipeline made of each study (waiting/queued/unmatched)
    op.create_table(
        "study_trigger",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("pipeline", sa.String(), nullable=False),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("note", sa.Text(), server_default="", nullable=False),
        sa.Column("deadline", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("updated_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["study_id"], ["study.id"]),
        sa.ForeignKeyConstraint(["job_id"], ["job.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("study_id", "pipeline"),
    )
    op.create_index("ix_study_trigger_study_id", "study_trigger", ["study_id"])
    op.create_index("ix_study_trigger_pipeline", "study_trigger", ["pipeline"])
    op.create_index("ix_study_trigger_state", "study_trigger", ["state"])
    # job_input: input name → series of a study-level job
    op.create_table(
        "job_input",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("series_id", sa.Integer(), nullable=False),
        sa.Column("study_instance_uid", sa.String(), nullable=False),
        sa.Column("series_instance_uid", sa.String(), nullable=False),
        sa.Column("prior", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["job.id"]),
        sa.ForeignKeyConstraint(["series_id"], ["series.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("job_id", "name"),
    )
    op.create_index("ix_job_input_job_id", "job_input", ["job_id"])
    op.create_index("ix_job_input_series_id", "job_input", ["series_id"])


def downgrade() -> None:
    op.drop_table("job_input")
    op.drop_table("study_trigger")

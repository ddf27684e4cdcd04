"""operator console: indexes for its time windows and study search

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06 23:00:00.000000

The overview counts rows per time bucket over the last hour or day (instances received, series
completed, jobs finished, deliveries sent): each is a range over an indexed timestamp instead of a table scan.
The study search filters by patient ID and StudyDate, and by a series' modality or AE title.
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

INDEXES = (
    ("ix_instance_received_at", "instance", ["received_at"]),
    ("ix_series_completed_at", "series", ["completed_at"]),
    ("ix_series_modality", "series", ["modality"]),
    ("ix_series_called_ae", "series", ["called_ae"]),
    ("ix_job_finished_at", "job", ["finished_at"]),
    ("ix_delivery_sent_at", "delivery", ["sent_at"]),
    ("ix_study_patient_id", "study", ["patient_id"]),
    ("ix_study_study_date", "study", ["study_date"]),
)


def upgrade() -> None:
    for name, table, columns in INDEXES:
        op.create_index(name, table, columns)


def downgrade() -> None:
    for name, table, _columns in reversed(INDEXES):
        op.drop_index(name, table_name=table)

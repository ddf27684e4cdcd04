"""api token roles, used one-time review links

Revision ID: 0006
Revises: 0004
Create Date: 2026-12-06 20:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0006"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # api_token.roles: space-separated role names. Tokens made before roles existed could do
    # everything; they keep that as "admin" so that no integration breaks on upgrade (the README
    # says to re-issue them with narrower roles). New tokens default to "viewer".
    with op.batch_alter_table("api_token", schema=None) as batch_op:
        batch_op.add_column(sa.Column("roles", sa.String(length=200), server_default="admin", nullable=False))
    # used_launch_link: one-time review links already used (refused a second time until they expire)
    op.create_table(
        "used_launch_link",
        sa.Column("nonce_hash", sa.String(length=64), nullable=False),
        sa.Column("used_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("expires_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("nonce_hash"),
    )
    op.create_index("ix_used_launch_link_expires_at", "used_launch_link", ["expires_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_used_launch_link_expires_at", table_name="used_launch_link")
    op.drop_table("used_launch_link")
    with op.batch_alter_table("api_token", schema=None) as batch_op:
        batch_op.drop_column("roles")

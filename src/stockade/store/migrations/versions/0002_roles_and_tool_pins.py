"""roles and tool pins

Revision ID: 0002
Revises: 0001
"""

import json

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_ALLOW_ALL = json.dumps([{"effect": "allow", "server": "*", "kind": "*", "name": "*"}])


def upgrade() -> None:
    roles = op.create_table(
        "roles",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("rules", sa.Text(), nullable=False),
        sa.Column("builtin", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    now = sa.func.now()
    op.execute(
        roles.insert().values(
            [
                {"name": "admin", "rules": _ALLOW_ALL, "builtin": 1, "updated_at": now},
                {"name": "member", "rules": _ALLOW_ALL, "builtin": 1, "updated_at": now},
            ]
        )
    )
    op.create_table(
        "tool_pins",
        sa.Column("server", sa.String(length=40), nullable=False),
        sa.Column("tool", sa.String(length=255), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("approved_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("changed_digest", sa.String(length=64), nullable=True),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("server", "tool"),
    )


def downgrade() -> None:
    op.drop_table("tool_pins")
    op.drop_table("roles")

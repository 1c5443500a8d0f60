"""replicas: a desired count per deployment and one row per instance

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# SQLite alters a table by copying it and dropping the original, and that drop cascades to rows
# referencing it: rows are read first and written only once the referenced table is final.


def upgrade() -> None:
    serving = op.get_bind().execute(sa.text(
        "SELECT id, endpoint, container_id, updated_at FROM deployments WHERE status = 'running' AND endpoint IS NOT NULL"
    )).fetchall()
    with op.batch_alter_table("deployments") as batch:
        batch.add_column(sa.Column("replicas", sa.Integer(), nullable=False, server_default="1"))
        batch.drop_column("endpoint")
        batch.drop_column("container_id")
    op.create_table(
        "instances",
        sa.Column("deployment_id", sa.String(length=36), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("endpoint", sa.String(length=255), nullable=True),
        sa.Column("container_id", sa.String(length=80), nullable=True),
        sa.Column("restarts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("last_exit", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["deployment_id"], ["deployments.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("deployment_id", "number"),
    )
    # The one container a deployment had becomes its instance 0 (adopted by its labels at start-up).
    for id_, endpoint, container_id, updated_at in serving:
        op.get_bind().execute(sa.text(
            "INSERT INTO instances (deployment_id, number, status, endpoint, container_id, restarts, updated_at) "
            "VALUES (:d, 0, 'running', :e, :c, 0, :u)"), {"d": id_, "e": endpoint, "c": container_id, "u": updated_at})


def downgrade() -> None:
    first = op.get_bind().execute(sa.text(
        "SELECT deployment_id, endpoint, container_id FROM instances WHERE status = 'running' ORDER BY number DESC"
    )).fetchall()
    op.drop_table("instances")
    with op.batch_alter_table("deployments") as batch:
        batch.add_column(sa.Column("endpoint", sa.String(length=255), nullable=True))
        batch.add_column(sa.Column("container_id", sa.String(length=80), nullable=True))
        batch.drop_column("replicas")
    for deployment_id, endpoint, container_id in first:  # the lowest number is written last and stays
        op.get_bind().execute(sa.text("UPDATE deployments SET endpoint = :e, container_id = :c WHERE id = :d"),
                              {"e": endpoint, "c": container_id, "d": deployment_id})

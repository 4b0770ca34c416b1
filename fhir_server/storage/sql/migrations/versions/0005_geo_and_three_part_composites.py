"""idx_geo (Location near), the third component of composite index rows, server_state

Revision ID: 0005
Revises: 0004

Existing resources get no rows in the new table or columns from this migration: run
``fhir-server reindex`` (Location, MolecularSequence, DocumentReference and Bundle are the types
whose parameters it newly indexes; number, quantity and token rows changed format for every
type).  ``server_state`` records the index version a database was built with, so that a server
finding an older one says so at start.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "server_state",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_table(
        "idx_geo",
        sa.Column("pid", sa.BigInteger(), nullable=False),
        sa.Column("res_type", sa.String(length=64), nullable=False),
        sa.Column("param", sa.String(length=100), nullable=False),
        sa.Column("lat", sa.Double(), nullable=True),
        sa.Column("lon", sa.Double(), nullable=True),
    )
    with op.batch_alter_table("idx_geo", schema=None) as batch_op:
        batch_op.create_index("ix_idx_geo_lookup", ["res_type", "param", "lat", "lon", "pid"], unique=False)
        batch_op.create_index("ix_idx_geo_pid", ["pid", "param"], unique=False)
    # Plain ADD COLUMN (nullable, no default) on both databases: no table rebuild on SQLite.
    op.add_column("idx_composite", sa.Column("c3_lo", sa.Numeric(), nullable=True))
    op.add_column("idx_composite", sa.Column("c3_hi", sa.Numeric(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("idx_composite", schema=None) as batch_op:
        batch_op.drop_column("c3_hi")
        batch_op.drop_column("c3_lo")
    with op.batch_alter_table("idx_geo", schema=None) as batch_op:
        batch_op.drop_index("ix_idx_geo_pid")
        batch_op.drop_index("ix_idx_geo_lookup")
    op.drop_table("idx_geo")
    op.drop_table("server_state")

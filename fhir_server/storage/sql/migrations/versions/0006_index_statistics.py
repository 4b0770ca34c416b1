"""Extended statistics on the index tables (PostgreSQL)

Revision ID: 0006
Revises: 0005

PostgreSQL estimates ``res_type = 'MedicationRequest' AND param = 'intent' AND code = 'order'`` by
multiplying the three columns' selectivities as if they were independent; they are not (a
parameter belongs to one type, a code to one parameter).  Measured at 1M resources: it expected 43
rows where 62,036 matched, drove MedicationRequest?patient=X&intent=order from the intent rows
instead of the patient's 96, and took 466 ms; with (mcv, dependencies) statistics on the lookup
columns the same query takes 9 ms.  SQLite's planner does not use such statistics: nothing to do.
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# index table -> the columns its lookups test for equality, in index order
STATISTICS = {
    "idx_string": ("res_type", "param", "value_norm"),
    "idx_token": ("res_type", "param", "code", "system"),
    "idx_date": ("res_type", "param"),
    "idx_number": ("res_type", "param"),
    "idx_quantity": ("res_type", "param", "code", "system"),
    "idx_reference": ("res_type", "param", "target_type"),
    "idx_uri": ("res_type", "param", "uri"),
    "idx_composite": ("res_type", "param", "c1_code", "c2_code"),
    "idx_geo": ("res_type", "param"),
}


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, columns in STATISTICS.items():
        op.execute(f"CREATE STATISTICS IF NOT EXISTS st_{table}_lookup (mcv, dependencies) "
                   f"ON {', '.join(columns)} FROM {table}")
        op.execute(f"ANALYZE {table}")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in STATISTICS:
        op.execute(f"DROP STATISTICS IF EXISTS st_{table}_lookup")

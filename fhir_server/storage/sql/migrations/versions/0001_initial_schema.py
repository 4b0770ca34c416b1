"""initial schema

Revision ID: 0001
Revises: (none)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table('idx_composite',
    sa.Column('pid', sa.BigInteger(), nullable=False),
    sa.Column('res_type', sa.String(length=64), nullable=False),
    sa.Column('param', sa.String(length=100), nullable=False),
    sa.Column('c1_system', sa.String(length=512).with_variant(sa.String(length=512, collation='C'), 'postgresql'), nullable=True),
    sa.Column('c1_code', sa.String(length=512).with_variant(sa.String(length=512, collation='C'), 'postgresql'), nullable=True),
    sa.Column('c2_system', sa.String(length=512).with_variant(sa.String(length=512, collation='C'), 'postgresql'), nullable=True),
    sa.Column('c2_code', sa.String(length=512).with_variant(sa.String(length=512, collation='C'), 'postgresql'), nullable=True),
    sa.Column('c2_lo', sa.Numeric(), nullable=True),
    sa.Column('c2_hi', sa.Numeric(), nullable=True)
    )
    with op.batch_alter_table('idx_composite', schema=None) as batch_op:
        batch_op.create_index('ix_idx_composite_lookup', ['res_type', 'param', 'c1_code', 'c2_code', 'pid'], unique=False)
        batch_op.create_index('ix_idx_composite_pid', ['pid', 'param'], unique=False)

    op.create_table('idx_date',
    sa.Column('pid', sa.BigInteger(), nullable=False),
    sa.Column('res_type', sa.String(length=64), nullable=False),
    sa.Column('param', sa.String(length=100), nullable=False),
    sa.Column('lo_ms', sa.BigInteger(), nullable=True),
    sa.Column('hi_ms', sa.BigInteger(), nullable=True)
    )
    with op.batch_alter_table('idx_date', schema=None) as batch_op:
        batch_op.create_index('ix_idx_date_lookup', ['res_type', 'param', 'lo_ms', 'hi_ms', 'pid'], unique=False)
        batch_op.create_index('ix_idx_date_pid', ['pid', 'param'], unique=False)

    op.create_table('idx_number',
    sa.Column('pid', sa.BigInteger(), nullable=False),
    sa.Column('res_type', sa.String(length=64), nullable=False),
    sa.Column('param', sa.String(length=100), nullable=False),
    sa.Column('lo', sa.Numeric(), nullable=True),
    sa.Column('hi', sa.Numeric(), nullable=True)
    )
    with op.batch_alter_table('idx_number', schema=None) as batch_op:
        batch_op.create_index('ix_idx_number_lookup', ['res_type', 'param', 'lo', 'hi', 'pid'], unique=False)
        batch_op.create_index('ix_idx_number_pid', ['pid', 'param'], unique=False)

    op.create_table('idx_quantity',
    sa.Column('pid', sa.BigInteger(), nullable=False),
    sa.Column('res_type', sa.String(length=64), nullable=False),
    sa.Column('param', sa.String(length=100), nullable=False),
    sa.Column('system', sa.String(length=512).with_variant(sa.String(length=512, collation='C'), 'postgresql'), nullable=True),
    sa.Column('code', sa.String(length=256).with_variant(sa.String(length=256, collation='C'), 'postgresql'), nullable=True),
    sa.Column('unit', sa.String(length=256).with_variant(sa.String(length=256, collation='C'), 'postgresql'), nullable=True),
    sa.Column('lo', sa.Numeric(), nullable=True),
    sa.Column('hi', sa.Numeric(), nullable=True)
    )
    with op.batch_alter_table('idx_quantity', schema=None) as batch_op:
        batch_op.create_index('ix_idx_quantity_lookup', ['res_type', 'param', 'code', 'lo', 'hi', 'pid'], unique=False)
        batch_op.create_index('ix_idx_quantity_pid', ['pid', 'param'], unique=False)

    op.create_table('idx_reference',
    sa.Column('pid', sa.BigInteger(), nullable=False),
    sa.Column('res_type', sa.String(length=64), nullable=False),
    sa.Column('param', sa.String(length=100), nullable=False),
    sa.Column('target_type', sa.String(length=64), nullable=True),
    sa.Column('target_id', sa.String(length=64), nullable=True),
    sa.Column('url', sa.Text(), nullable=True)
    )
    with op.batch_alter_table('idx_reference', schema=None) as batch_op:
        batch_op.create_index('ix_idx_reference_lookup', ['res_type', 'param', 'target_id', 'target_type', 'pid'], unique=False)
        batch_op.create_index('ix_idx_reference_pid', ['pid', 'param'], unique=False)
        batch_op.create_index('ix_idx_reference_target', ['target_type', 'target_id'], unique=False)

    op.create_table('idx_string',
    sa.Column('pid', sa.BigInteger(), nullable=False),
    sa.Column('res_type', sa.String(length=64), nullable=False),
    sa.Column('param', sa.String(length=100), nullable=False),
    sa.Column('value_norm', sa.String(length=255).with_variant(sa.String(length=255, collation='C'), 'postgresql'), nullable=True),
    sa.Column('value_exact', sa.Text(), nullable=True)
    )
    with op.batch_alter_table('idx_string', schema=None) as batch_op:
        batch_op.create_index('ix_idx_string_lookup', ['res_type', 'param', 'value_norm', 'pid'], unique=False)
        batch_op.create_index('ix_idx_string_pid', ['pid', 'param'], unique=False)

    op.create_table('idx_token',
    sa.Column('pid', sa.BigInteger(), nullable=False),
    sa.Column('res_type', sa.String(length=64), nullable=False),
    sa.Column('param', sa.String(length=100), nullable=False),
    sa.Column('system', sa.String(length=512).with_variant(sa.String(length=512, collation='C'), 'postgresql'), nullable=True),
    sa.Column('code', sa.String(length=512).with_variant(sa.String(length=512, collation='C'), 'postgresql'), nullable=True),
    sa.Column('text_norm', sa.String(length=255).with_variant(sa.String(length=255, collation='C'), 'postgresql'), nullable=True)
    )
    with op.batch_alter_table('idx_token', schema=None) as batch_op:
        batch_op.create_index('ix_idx_token_lookup', ['res_type', 'param', 'code', 'system', 'pid'], unique=False)
        batch_op.create_index('ix_idx_token_pid', ['pid', 'param'], unique=False)
        batch_op.create_index('ix_idx_token_text', ['res_type', 'param', 'text_norm', 'pid'], unique=False)

    op.create_table('idx_uri',
    sa.Column('pid', sa.BigInteger(), nullable=False),
    sa.Column('res_type', sa.String(length=64), nullable=False),
    sa.Column('param', sa.String(length=100), nullable=False),
    sa.Column('uri', sa.String(length=1024).with_variant(sa.String(length=1024, collation='C'), 'postgresql'), nullable=True)
    )
    with op.batch_alter_table('idx_uri', schema=None) as batch_op:
        batch_op.create_index('ix_idx_uri_lookup', ['res_type', 'param', 'uri', 'pid'], unique=False)
        batch_op.create_index('ix_idx_uri_pid', ['pid', 'param'], unique=False)

    op.create_table('resource',
    sa.Column('pid', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('res_type', sa.String(length=64), nullable=False),
    sa.Column('res_id', sa.String(length=64), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('last_updated', sa.String(length=40), nullable=False),
    sa.Column('lu_ms', sa.BigInteger(), nullable=False),
    sa.Column('deleted', sa.Boolean(), nullable=False),
    sa.Column('body', sa.LargeBinary(), nullable=True),
    sa.PrimaryKeyConstraint('pid'),
    sa.UniqueConstraint('res_type', 'res_id', name='uq_resource_type_id')
    )
    with op.batch_alter_table('resource', schema=None) as batch_op:
        batch_op.create_index('ix_resource_type_lu', ['res_type', 'lu_ms', 'deleted'], unique=False)

    op.create_table('resource_history',
    sa.Column('hid', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('pid', sa.BigInteger(), nullable=False),
    sa.Column('res_type', sa.String(length=64), nullable=False),
    sa.Column('res_id', sa.String(length=64), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('last_updated', sa.String(length=40), nullable=False),
    sa.Column('lu_ms', sa.BigInteger(), nullable=False),
    sa.Column('deleted', sa.Boolean(), nullable=False),
    sa.Column('method', sa.String(length=8), nullable=False),
    sa.Column('body', sa.LargeBinary(), nullable=True),
    sa.PrimaryKeyConstraint('hid'),
    sa.UniqueConstraint('res_type', 'res_id', 'version', name='uq_history_version')
    )
    with op.batch_alter_table('resource_history', schema=None) as batch_op:
        batch_op.create_index('ix_history_lu', ['lu_ms'], unique=False)
        batch_op.create_index('ix_history_type_hid', ['res_type', 'hid'], unique=False)




def downgrade() -> None:

    with op.batch_alter_table('resource_history', schema=None) as batch_op:
        batch_op.drop_index('ix_history_type_hid')
        batch_op.drop_index('ix_history_lu')

    op.drop_table('resource_history')
    with op.batch_alter_table('resource', schema=None) as batch_op:
        batch_op.drop_index('ix_resource_type_lu')

    op.drop_table('resource')
    with op.batch_alter_table('idx_uri', schema=None) as batch_op:
        batch_op.drop_index('ix_idx_uri_pid')
        batch_op.drop_index('ix_idx_uri_lookup')

    op.drop_table('idx_uri')
    with op.batch_alter_table('idx_token', schema=None) as batch_op:
        batch_op.drop_index('ix_idx_token_text')
        batch_op.drop_index('ix_idx_token_pid')
        batch_op.drop_index('ix_idx_token_lookup')

    op.drop_table('idx_token')
    with op.batch_alter_table('idx_string', schema=None) as batch_op:
        batch_op.drop_index('ix_idx_string_pid')
        batch_op.drop_index('ix_idx_string_lookup')

    op.drop_table('idx_string')
    with op.batch_alter_table('idx_reference', schema=None) as batch_op:
        batch_op.drop_index('ix_idx_reference_target')
        batch_op.drop_index('ix_idx_reference_pid')
        batch_op.drop_index('ix_idx_reference_lookup')

    op.drop_table('idx_reference')
    with op.batch_alter_table('idx_quantity', schema=None) as batch_op:
        batch_op.drop_index('ix_idx_quantity_pid')
        batch_op.drop_index('ix_idx_quantity_lookup')

    op.drop_table('idx_quantity')
    with op.batch_alter_table('idx_number', schema=None) as batch_op:
        batch_op.drop_index('ix_idx_number_pid')
        batch_op.drop_index('ix_idx_number_lookup')

    op.drop_table('idx_number')
    with op.batch_alter_table('idx_date', schema=None) as batch_op:
        batch_op.drop_index('ix_idx_date_pid')
        batch_op.drop_index('ix_idx_date_lookup')

    op.drop_table('idx_date')
    with op.batch_alter_table('idx_composite', schema=None) as batch_op:
        batch_op.drop_index('ix_idx_composite_pid')
        batch_op.drop_index('ix_idx_composite_lookup')

    op.drop_table('idx_composite')


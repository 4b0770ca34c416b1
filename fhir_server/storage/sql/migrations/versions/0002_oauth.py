"""oauth: clients, users, codes, refresh tokens, revocations, signing keys, API keys, launches

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

# The OAuth tables share schema.metadata but are defined in fhir_server.auth; Alembic loads every
# revision file before it compares or upgrades, so importing them here keeps the metadata that
# env.py and the migration test compare against complete even when nothing else imported them.
import fhir_server.auth.tables  # noqa: F401

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('oauth_api_key',
    sa.Column('key_hash', sa.String(length=64), nullable=False),
    sa.Column('prefix', sa.String(length=16), nullable=False),
    sa.Column('client_id', sa.String(length=128), nullable=False),
    sa.Column('scopes', sa.Text(), nullable=True),
    sa.Column('created_ms', sa.BigInteger(), nullable=False),
    sa.Column('revoked', sa.Boolean(), nullable=False),
    sa.PrimaryKeyConstraint('key_hash')
    )
    op.create_table('oauth_assertion_jti',
    sa.Column('client_id', sa.String(length=128), nullable=False),
    sa.Column('jti', sa.String(length=255), nullable=False),
    sa.Column('expires_ms', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('client_id', 'jti', name='pk_oauth_assertion_jti')
    )
    op.create_table('oauth_client',
    sa.Column('client_id', sa.String(length=128), nullable=False),
    sa.Column('secret_hash', sa.String(length=255), nullable=True),
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('grant_types', sa.Text(), nullable=False),
    sa.Column('scopes', sa.Text(), nullable=False),
    sa.Column('redirect_uris', sa.Text(), nullable=False),
    sa.Column('jwks', sa.Text(), nullable=True),
    sa.Column('jwks_url', sa.String(length=2048), nullable=True),
    sa.Column('public', sa.Boolean(), nullable=False),
    sa.Column('created_ms', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('client_id')
    )
    op.create_table('oauth_code',
    sa.Column('code_hash', sa.String(length=64), nullable=False),
    sa.Column('client_id', sa.String(length=128), nullable=False),
    sa.Column('username', sa.String(length=128), nullable=False),
    sa.Column('redirect_uri', sa.Text(), nullable=True),
    sa.Column('scope', sa.Text(), nullable=False),
    sa.Column('code_challenge', sa.String(length=128), nullable=True),
    sa.Column('code_challenge_method', sa.String(length=16), nullable=True),
    sa.Column('nonce', sa.String(length=255), nullable=True),
    sa.Column('patient', sa.String(length=64), nullable=True),
    sa.Column('encounter', sa.String(length=64), nullable=True),
    sa.Column('expires_ms', sa.BigInteger(), nullable=False),
    sa.Column('used', sa.Boolean(), nullable=False),
    sa.PrimaryKeyConstraint('code_hash')
    )
    op.create_table('oauth_launch',
    sa.Column('launch_id', sa.String(length=64), nullable=False),
    sa.Column('patient', sa.String(length=64), nullable=True),
    sa.Column('encounter', sa.String(length=64), nullable=True),
    sa.Column('expires_ms', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('launch_id')
    )
    op.create_table('oauth_refresh',
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('client_id', sa.String(length=128), nullable=False),
    sa.Column('username', sa.String(length=128), nullable=True),
    sa.Column('scope', sa.Text(), nullable=False),
    sa.Column('patient', sa.String(length=64), nullable=True),
    sa.Column('encounter', sa.String(length=64), nullable=True),
    sa.Column('fhir_user', sa.String(length=255), nullable=True),
    sa.Column('expires_ms', sa.BigInteger(), nullable=False),
    sa.Column('revoked', sa.Boolean(), nullable=False),
    sa.Column('replaced_by', sa.String(length=64), nullable=True),
    sa.PrimaryKeyConstraint('token_hash')
    )
    with op.batch_alter_table('oauth_refresh', schema=None) as batch_op:
        batch_op.create_index('ix_oauth_refresh_client_user', ['client_id', 'username'], unique=False)

    op.create_table('oauth_revoked',
    sa.Column('jti', sa.String(length=64), nullable=False),
    sa.Column('expires_ms', sa.BigInteger(), nullable=False),
    sa.Column('revoked_ms', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('jti')
    )
    with op.batch_alter_table('oauth_revoked', schema=None) as batch_op:
        batch_op.create_index('ix_oauth_revoked_revoked_ms', ['revoked_ms'], unique=False)

    op.create_table('oauth_signing_key',
    sa.Column('kid', sa.String(length=64), nullable=False),
    sa.Column('private_pem', sa.Text(), nullable=False),
    sa.Column('alg', sa.String(length=16), nullable=False),
    sa.Column('created_ms', sa.BigInteger(), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.PrimaryKeyConstraint('kid')
    )
    op.create_table('oauth_user',
    sa.Column('username', sa.String(length=128), nullable=False),
    sa.Column('password_hash', sa.String(length=255), nullable=False),
    sa.Column('fhir_user', sa.String(length=255), nullable=True),
    sa.Column('patient', sa.String(length=64), nullable=True),
    sa.Column('totp_secret', sa.String(length=64), nullable=True),
    sa.Column('created_ms', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('username')
    )


def downgrade() -> None:
    op.drop_table('oauth_user')
    op.drop_table('oauth_signing_key')
    with op.batch_alter_table('oauth_revoked', schema=None) as batch_op:
        batch_op.drop_index('ix_oauth_revoked_revoked_ms')

    op.drop_table('oauth_revoked')
    with op.batch_alter_table('oauth_refresh', schema=None) as batch_op:
        batch_op.drop_index('ix_oauth_refresh_client_user')

    op.drop_table('oauth_refresh')
    op.drop_table('oauth_launch')
    op.drop_table('oauth_code')
    op.drop_table('oauth_client')
    op.drop_table('oauth_assertion_jti')
    op.drop_table('oauth_api_key')

"""sign-in sessions and single-use Lovense pairings

Revision ID: i20_01
Revises: i13_01
Create Date: 2026-11-26 04:00:00

`auth_sessions`: one row per sign-in; every token we issue names its session, so logging out, deactivating a
user or a reused refresh token ends it on the next request. `lovense_pairings`: the nonce of each QR code we
issue, used once by Lovense's callback; `lovense_links.pairing_nonce` records which pairing made the link.
"""
from alembic import op
import sqlalchemy as sa
import models.types


revision = 'i20_01'
down_revision = 'i13_01'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'auth_sessions',
        sa.Column('id', sa.Uuid(), nullable=False),
        sa.Column('user_id', sa.Uuid(), nullable=False),
        sa.Column('refresh_jti', sa.String(length=64), nullable=False),
        sa.Column('created_at', models.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column('expires_at', models.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column('revoked_at', models.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column('revoked_reason', sa.String(length=40), nullable=True),
        sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_auth_sessions_user_id_users')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_auth_sessions')),
    )
    op.create_index(op.f('ix_auth_sessions_user_id'), 'auth_sessions', ['user_id'], unique=False)
    op.create_table(
        'lovense_pairings',
        sa.Column('nonce', sa.String(length=32), nullable=False),
        sa.Column('model_id', sa.Uuid(), nullable=False),
        sa.Column('expires_at', models.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column('used_at', models.types.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['model_id'], ['users.id'], name=op.f('fk_lovense_pairings_model_id_users')),
        sa.PrimaryKeyConstraint('nonce', name=op.f('pk_lovense_pairings')),
    )
    op.create_index(op.f('ix_lovense_pairings_model_id'), 'lovense_pairings', ['model_id'], unique=False)
    with op.batch_alter_table('lovense_links', schema=None) as batch_op:
        batch_op.add_column(sa.Column('pairing_nonce', sa.String(length=32), nullable=True))


def downgrade():
    with op.batch_alter_table('lovense_links', schema=None) as batch_op:
        batch_op.drop_column('pairing_nonce')
    op.drop_index(op.f('ix_lovense_pairings_model_id'), table_name='lovense_pairings')
    op.drop_table('lovense_pairings')
    op.drop_index(op.f('ix_auth_sessions_user_id'), table_name='auth_sessions')
    op.drop_table('auth_sessions')

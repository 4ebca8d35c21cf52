"""seed contract and platform identity

Revision ID: i13_01
Revises: i4_01
Create Date: 2026-11-26 01:40:00

A purchase's client `metadata` and its `updated_at` (the seed API's record fields); a user's `external_id`
(the host platform's id of a user who signs in with the platform's tokens).
"""
from alembic import op
import sqlalchemy as sa
import models.types


revision = 'i13_01'
down_revision = 'i4_01'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('purchases', schema=None) as batch_op:
        batch_op.add_column(sa.Column('metadata', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('updated_at', models.types.UTCDateTime(timezone=True), nullable=True))
    # Existing rows: the time of their last transition.
    op.execute("UPDATE purchases SET updated_at = COALESCE(refunded_at, failed_at, completed_at, started_at, "
               "settled_at, created_at)")
    with op.batch_alter_table('purchases', schema=None) as batch_op:
        batch_op.alter_column('updated_at', nullable=False)
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.add_column(sa.Column('external_id', sa.String(length=128), nullable=True))
        batch_op.create_unique_constraint(batch_op.f('uq_users_external_id'), ['external_id'])


def downgrade():
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('uq_users_external_id'), type_='unique')
        batch_op.drop_column('external_id')
    with op.batch_alter_table('purchases', schema=None) as batch_op:
        batch_op.drop_column('updated_at')
        batch_op.drop_column('metadata')

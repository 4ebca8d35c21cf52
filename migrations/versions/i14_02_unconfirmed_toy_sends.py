"""unconfirmed toy sends

Revision ID: i14_02
Revises: i14_01
Create Date: 2026-11-28 09:00:00

A toy command whose outcome is unknown (the reply never came, the connection dropped after the request went out,
or the worker died mid-send) may have reached the toy, so it is never sent again on its own: `sending_since` marks
the row just before the request goes out, and the new status `unconfirmed` records such a send.
"""
from alembic import op
import sqlalchemy as sa
import models.types


revision = 'i14_02'
down_revision = 'i14_01'
branch_labels = None
depends_on = None

OLD_STATUSES = ('pending', 'sent', 'failed', 'skipped', 'stopped', 'expired')
STATUSES = OLD_STATUSES + ('unconfirmed',)


def _statuses(batch_op, statuses):
    """Widen or narrow the status CHECK (SQLite: by rebuilding the table, its other constraints kept)."""
    batch_op.drop_constraint(op.f('ck_lovense_activations_activation_status'), type_='check')
    batch_op.create_check_constraint(op.f('ck_lovense_activations_activation_status'),
                                     "status IN (%s)" % ", ".join(f"'{s}'" for s in statuses))


def upgrade():
    with op.batch_alter_table('lovense_activations', schema=None) as batch_op:
        _statuses(batch_op, STATUSES)
        batch_op.add_column(sa.Column('sending_since', models.types.UTCDateTime(timezone=True), nullable=True))


def downgrade():
    # The closest older status: it may have played.
    op.execute("UPDATE lovense_activations SET status = 'sent' WHERE status = 'unconfirmed'")
    with op.batch_alter_table('lovense_activations', schema=None) as batch_op:
        batch_op.drop_column('sending_since')
        _statuses(batch_op, OLD_STATUSES)

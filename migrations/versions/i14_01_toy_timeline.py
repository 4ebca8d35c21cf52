"""the toy timeline

Revision ID: i14_01
Revises: i17_01
Create Date: 2026-11-27 09:00:00

Each toy activation gets a slot on its model's timeline (due_at, scheduled_at, starts_at, ends_at), and two more
statuses: stopped (cut off by a Stop) and expired (a Queue OFF buzz too late to play).
"""
from alembic import op
import sqlalchemy as sa
import models.types


revision = 'i14_01'
down_revision = 'i17_01'
branch_labels = None
depends_on = None

OLD_STATUSES = ('pending', 'sent', 'failed', 'skipped')
STATUSES = OLD_STATUSES + ('stopped', 'expired')
SLOT_COLUMNS = ('due_at', 'scheduled_at', 'starts_at', 'ends_at')


def _statuses(batch_op, statuses):
    """Widen or narrow the status CHECK (SQLite: by rebuilding the table, its other constraints kept)."""
    batch_op.drop_constraint(op.f('ck_lovense_activations_activation_status'), type_='check')
    batch_op.create_check_constraint(op.f('ck_lovense_activations_activation_status'),
                                     "status IN (%s)" % ", ".join(f"'{s}'" for s in statuses))


def upgrade():
    with op.batch_alter_table('lovense_activations', schema=None) as batch_op:
        _statuses(batch_op, STATUSES)
        for name in SLOT_COLUMNS:
            batch_op.add_column(sa.Column(name, models.types.UTCDateTime(timezone=True), nullable=True))
        batch_op.create_index('ix_lovense_activations_model_status_starts', ['model_id', 'status', 'starts_at'],
                              unique=False)


def downgrade():
    op.execute("UPDATE lovense_activations SET status = 'skipped' WHERE status IN ('stopped', 'expired')")
    with op.batch_alter_table('lovense_activations', schema=None) as batch_op:
        batch_op.drop_index('ix_lovense_activations_model_status_starts')
        for name in reversed(SLOT_COLUMNS):
            batch_op.drop_column(name)
        _statuses(batch_op, OLD_STATUSES)

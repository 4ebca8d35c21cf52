"""the platform's commission, the earnings rollup and payouts

Revision ID: i17_01
Revises: i20_01
Create Date: 2026-11-26 04:10:00

Two account kinds per model (platform_revenue: the platform's fee on the model's sales; payouts: what was paid
out to the model) and two entry kinds (platform_fee, payout); a model's own commission rate; each purchase's rate
and fee; the daily earnings rollup.
"""
from alembic import op
import sqlalchemy as sa
import models.types


revision = 'i17_01'
down_revision = 'i20_01'
branch_labels = None
depends_on = None

OLD_ACCOUNT_KINDS = ('token_issuer', 'wallet', 'earnings', 'escrow', 'points_issuer', 'loyalty')
ACCOUNT_KINDS = OLD_ACCOUNT_KINDS + ('platform_revenue', 'payouts')
OLD_ENTRY_KINDS = ('top_up', 'purchase', 'escrow_hold', 'escrow_release', 'escrow_refund', 'loyalty_award',
                   'adjustment')
ENTRY_KINDS = OLD_ENTRY_KINDS + ('platform_fee', 'payout')


def _kinds(table, name, kinds):
    """Widen a kind CHECK (SQLite: by rebuilding the table, its other constraints kept)."""
    with op.batch_alter_table(table) as batch_op:
        batch_op.drop_constraint(op.f(f'ck_{table}_{name}'), type_='check')
        batch_op.create_check_constraint(op.f(f'ck_{table}_{name}'), "kind IN (%s)" % ", ".join(f"'{k}'" for k in kinds))


def _day(column):
    return f"date({column})" if op.get_bind().dialect.name == 'sqlite' else f"CAST({column} AS date)"


def upgrade():
    _kinds('accounts', 'account_kind', ACCOUNT_KINDS)
    _kinds('ledger_entries', 'entry_kind', ENTRY_KINDS)
    # Every model already here gets the two new accounts.
    for kind in ('platform_revenue', 'payouts'):
        op.execute(f"INSERT INTO accounts (owner_id, kind, balance, created_at) SELECT id, '{kind}', 0, "
                   "CURRENT_TIMESTAMP FROM users WHERE role = 'model'")
    op.create_table(
        'commission_rates',
        sa.Column('model_id', sa.Uuid(), nullable=False),
        sa.Column('bps', sa.Integer(), nullable=False),
        sa.Column('set_by', sa.Uuid(), nullable=True),
        sa.Column('set_at', models.types.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint('bps BETWEEN 0 AND 9999', name=op.f('ck_commission_rates_bps_range')),
        sa.ForeignKeyConstraint(['model_id'], ['users.id'], name=op.f('fk_commission_rates_model_id_users')),
        sa.ForeignKeyConstraint(['set_by'], ['users.id'], name=op.f('fk_commission_rates_set_by_users')),
        sa.PrimaryKeyConstraint('model_id', name=op.f('pk_commission_rates')),
    )
    op.create_table(
        'earnings_days',
        sa.Column('model_id', sa.Uuid(), nullable=False),
        sa.Column('day', sa.Date(), nullable=False),
        sa.Column('item_id', sa.Uuid(), nullable=False),
        sa.Column('menu_id', sa.Uuid(), nullable=False),
        sa.Column('sales', sa.Integer(), nullable=False),
        sa.Column('gross', sa.BigInteger(), nullable=False),
        sa.Column('fee', sa.BigInteger(), nullable=False),
        sa.Column('refunds', sa.Integer(), nullable=False),
        sa.Column('refunded', sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(['item_id'], ['menu_items.id'], name=op.f('fk_earnings_days_item_id_menu_items')),
        sa.ForeignKeyConstraint(['menu_id'], ['menus.id'], name=op.f('fk_earnings_days_menu_id_menus')),
        sa.ForeignKeyConstraint(['model_id'], ['users.id'], name=op.f('fk_earnings_days_model_id_users')),
        sa.PrimaryKeyConstraint('model_id', 'day', 'item_id', name=op.f('pk_earnings_days')),
    )
    with op.batch_alter_table('purchases', schema=None) as batch_op:
        batch_op.add_column(sa.Column('fee_bps', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('platform_fee', sa.Integer(), nullable=True))
        batch_op.create_index('ix_purchases_model_completed', ['model_id', 'completed_at'], unique=False)
    # Sales made before the rollup existed: completed purchases by their completion day (UTC) and refunds.
    op.execute(f"""
        INSERT INTO earnings_days (model_id, day, item_id, menu_id, sales, gross, fee, refunds, refunded)
        SELECT model_id, day, item_id, menu_id, sum(sales), sum(gross), 0, sum(refunds), sum(refunded)
        FROM (SELECT model_id, {_day('completed_at')} AS day, item_id, menu_id, 1 AS sales, token_value AS gross,
                     0 AS refunds, 0 AS refunded FROM purchases WHERE status = 'completed'
              UNION ALL
              SELECT model_id, {_day('refunded_at')}, item_id, menu_id, 0, 0, 1, token_value
              FROM purchases WHERE status = 'refunded') AS moves
        GROUP BY model_id, day, item_id, menu_id""")


def downgrade():
    with op.batch_alter_table('purchases', schema=None) as batch_op:
        batch_op.drop_index('ix_purchases_model_completed')
        batch_op.drop_column('platform_fee')
        batch_op.drop_column('fee_bps')
    op.drop_table('earnings_days')
    op.drop_table('commission_rates')
    op.execute("DELETE FROM accounts WHERE kind IN ('platform_revenue', 'payouts')")
    _kinds('ledger_entries', 'entry_kind', OLD_ENTRY_KINDS)
    _kinds('accounts', 'account_kind', OLD_ACCOUNT_KINDS)

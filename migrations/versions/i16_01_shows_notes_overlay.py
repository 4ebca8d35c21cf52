"""shows, purchase notes and anonymity, live-only menus, the queue pause, overlay links

Revision ID: i16_01
Revises: i15_01
Create Date: 2026-11-26 13:40:00

`shows`: a model's shows (live, paused, ended); a partial unique index keeps one open show per model.
`purchases.show_id` attributes a sale to the show open when it was made; `purchases.note` and `.anonymous` are
the fan's note and wish to stay anonymous. `menus.live_only`, `users.queue_paused`. `overlay_links`: the hash of
each model's secret overlay key. The `purchase.accepted` trigger adds `anonymous` to its payload, as
models.outbox.purchase_event now does.
"""
from alembic import op
import sqlalchemy as sa
import models.types


revision = 'i16_01'
down_revision = 'i15_01'
branch_labels = None
depends_on = None

# The accepted event's payload: the fields models.outbox.purchase_event writes for every later status.
_PAYLOAD = ("'status', NEW.status, 'item_id', NEW.item_id, 'item_name', NEW.item_name, "
            "'token_value', NEW.token_value, 'transaction_type', NEW.transaction_type, 'anonymous', NEW.anonymous")
_COLUMNS = "type, occurred_at, model_id, fan_id, purchase_id, payload"
_VALUES = "'purchase.accepted', NEW.created_at, NEW.model_id, NEW.fan_id, NEW.id"


def _accepted_trigger(payload: str) -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.execute(f"""
            CREATE OR REPLACE FUNCTION purchase_accepted_event() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
              INSERT INTO outbox_events ({_COLUMNS}) VALUES ({_VALUES}, json_build_object({payload}));
              RETURN NULL;
            END $$""")
    else:
        # SQLite keeps a UUID as 32 hex digits and a boolean as 0/1: the payload spells them as Python does.
        dashed = "||'-'||".join(f"substr(NEW.item_id, {a}, {n})" for a, n in ((1, 8), (9, 4), (13, 4), (17, 4), (21, 12)))
        payload = payload.replace("'item_id', NEW.item_id", f"'item_id', {dashed}")
        payload = payload.replace("NEW.anonymous", "json(CASE WHEN NEW.anonymous THEN 'true' ELSE 'false' END)")
        op.execute("DROP TRIGGER IF EXISTS purchase_accepted")
        op.execute(f"CREATE TRIGGER purchase_accepted AFTER INSERT ON purchases BEGIN "
                   f"INSERT INTO outbox_events ({_COLUMNS}) VALUES ({_VALUES}, json_object({payload})); END")


def upgrade():
    op.create_table(
        'shows',
        sa.Column('id', sa.Uuid(), nullable=False),
        sa.Column('model_id', sa.Uuid(), nullable=False),
        sa.Column('status', sa.Enum('live', 'paused', 'ended', name='show_status', native_enum=False,
                                    create_constraint=True, length=24), nullable=False),
        sa.Column('started_at', models.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column('paused_at', models.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column('ended_at', models.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column('end_mode', sa.Enum('keep', 'refund_all', name='show_end_mode', native_enum=False,
                                      create_constraint=True, length=24), nullable=True),
        sa.ForeignKeyConstraint(['model_id'], ['users.id'], name=op.f('fk_shows_model_id_users')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_shows')),
    )
    op.create_index(op.f('ix_shows_model_id'), 'shows', ['model_id'], unique=False)
    op.create_index('uq_shows_one_open_per_model', 'shows', ['model_id'], unique=True,
                    postgresql_where=sa.text("status <> 'ended'"), sqlite_where=sa.text("status <> 'ended'"))
    op.create_table(
        'overlay_links',
        sa.Column('model_id', sa.Uuid(), nullable=False),
        sa.Column('key_hash', sa.String(length=64), nullable=False),
        sa.Column('created_at', models.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['model_id'], ['users.id'], name=op.f('fk_overlay_links_model_id_users')),
        sa.PrimaryKeyConstraint('model_id', name=op.f('pk_overlay_links')),
        sa.UniqueConstraint('key_hash', name=op.f('uq_overlay_links_key_hash')),
    )
    with op.batch_alter_table('purchases', schema=None) as batch_op:
        batch_op.add_column(sa.Column('note', sa.String(length=280), nullable=True))
        batch_op.add_column(sa.Column('anonymous', sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column('show_id', sa.Uuid(), nullable=True))
        batch_op.create_foreign_key(op.f('fk_purchases_show_id_shows'), 'shows', ['show_id'], ['id'])
    op.create_index('ix_purchases_show', 'purchases', ['show_id'], unique=False,
                    postgresql_where=sa.text('show_id IS NOT NULL'), sqlite_where=sa.text('show_id IS NOT NULL'))
    with op.batch_alter_table('menus', schema=None) as batch_op:
        batch_op.add_column(sa.Column('live_only', sa.Boolean(), nullable=False, server_default=sa.false()))
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.add_column(sa.Column('queue_paused', sa.Boolean(), nullable=False, server_default=sa.false()))
    _accepted_trigger(_PAYLOAD)


def downgrade():
    _accepted_trigger(_PAYLOAD.removesuffix(", 'anonymous', NEW.anonymous"))
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_column('queue_paused')
    with op.batch_alter_table('menus', schema=None) as batch_op:
        batch_op.drop_column('live_only')
    op.drop_index('ix_purchases_show', table_name='purchases')
    with op.batch_alter_table('purchases', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('fk_purchases_show_id_shows'), type_='foreignkey')
        batch_op.drop_column('show_id')
        batch_op.drop_column('anonymous')
        batch_op.drop_column('note')
    op.drop_table('overlay_links')
    op.drop_index('uq_shows_one_open_per_model', table_name='shows')
    op.drop_index(op.f('ix_shows_model_id'), table_name='shows')
    op.drop_table('shows')

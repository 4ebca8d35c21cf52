"""the transactional outbox and webhooks

Revision ID: i15_01
Revises: i14_02
Create Date: 2026-11-26 07:30:00

Events written with the changes they describe (outbox_events), numbered by the relay (seq); webhook endpoints and
one delivery row per (endpoint, event). A trigger writes the `purchase.accepted` event of every purchase row
inserted, in the insert's own statement: intake stays one INSERT in autocommit (docs/architecture.md, "Events out").
"""
from alembic import op
import sqlalchemy as sa
import models.types


revision = 'i15_01'
down_revision = 'i14_02'
branch_labels = None
depends_on = None

# The accepted event's payload: the fields models.outbox.purchase_event writes for every later status.
_PAYLOAD = ("'status', NEW.status, 'item_id', NEW.item_id, 'item_name', NEW.item_name, "
            "'token_value', NEW.token_value, 'transaction_type', NEW.transaction_type")
_COLUMNS = "type, occurred_at, model_id, fan_id, purchase_id, payload"
_VALUES = "'purchase.accepted', NEW.created_at, NEW.model_id, NEW.fan_id, NEW.id"


def upgrade():
    op.create_table(
        'outbox_events',
        sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
        sa.Column('seq', sa.BigInteger(), nullable=True),
        sa.Column('type', sa.String(length=40), nullable=False),
        sa.Column('occurred_at', models.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column('model_id', sa.Uuid(), nullable=True),
        sa.Column('fan_id', sa.Uuid(), nullable=True),
        sa.Column('purchase_id', sa.Uuid(), nullable=True),
        sa.Column('payload', sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_outbox_events')),
        sa.UniqueConstraint('seq', name=op.f('uq_outbox_events_seq')),
    )
    op.create_index(op.f('ix_outbox_events_model_id'), 'outbox_events', ['model_id'], unique=False)
    op.create_index(op.f('ix_outbox_events_fan_id'), 'outbox_events', ['fan_id'], unique=False)
    op.create_index(op.f('ix_outbox_events_purchase_id'), 'outbox_events', ['purchase_id'], unique=False)
    op.create_index('ix_outbox_events_unsequenced', 'outbox_events', ['id'], unique=False,
                    postgresql_where=sa.text('seq IS NULL'), sqlite_where=sa.text('seq IS NULL'))
    op.create_table(
        'webhook_endpoints',
        sa.Column('id', sa.Uuid(), nullable=False),
        sa.Column('url', sa.String(length=2000), nullable=False),
        sa.Column('event_types', sa.JSON(), nullable=False),
        sa.Column('secret', sa.String(length=100), nullable=False),
        sa.Column('is_active', sa.Boolean(), nullable=False),
        sa.Column('description', sa.String(length=200), nullable=True),
        sa.Column('created_by', sa.Uuid(), nullable=True),
        sa.Column('created_at', models.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['created_by'], ['users.id'], name=op.f('fk_webhook_endpoints_created_by_users')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_webhook_endpoints')),
    )
    op.create_table(
        'webhook_deliveries',
        sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
        sa.Column('endpoint_id', sa.Uuid(), nullable=False),
        sa.Column('event_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
        sa.Column('event_seq', sa.BigInteger(), nullable=False),
        sa.Column('status', sa.Enum('pending', 'delivered', 'dead', name='delivery_status', native_enum=False,
                                    create_constraint=True, length=24), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('next_attempt_at', models.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column('last_attempt_at', models.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column('last_status_code', sa.Integer(), nullable=True),
        sa.Column('last_error', sa.String(length=60), nullable=True),
        sa.Column('delivered_at', models.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column('created_at', models.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['endpoint_id'], ['webhook_endpoints.id'],
                                name=op.f('fk_webhook_deliveries_endpoint_id_webhook_endpoints')),
        sa.ForeignKeyConstraint(['event_id'], ['outbox_events.id'],
                                name=op.f('fk_webhook_deliveries_event_id_outbox_events')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_webhook_deliveries')),
        sa.UniqueConstraint('endpoint_id', 'event_id', name=op.f('uq_webhook_deliveries_endpoint_id_event_id')),
    )
    op.create_index('ix_webhook_deliveries_due', 'webhook_deliveries', ['status', 'next_attempt_at'], unique=False)
    if op.get_bind().dialect.name == 'postgresql':
        op.execute(f"""
            CREATE FUNCTION purchase_accepted_event() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
              INSERT INTO outbox_events ({_COLUMNS}) VALUES ({_VALUES}, json_build_object({_PAYLOAD}));
              RETURN NULL;
            END $$""")
        op.execute("CREATE TRIGGER purchase_accepted AFTER INSERT ON purchases "
                   "FOR EACH ROW EXECUTE FUNCTION purchase_accepted_event()")
    else:
        # SQLite keeps a UUID as 32 hex digits: the payload spells it as Python does.
        dashed = "||'-'||".join(f"substr(NEW.item_id, {a}, {n})" for a, n in ((1, 8), (9, 4), (13, 4), (17, 4), (21, 12)))
        payload = _PAYLOAD.replace("'item_id', NEW.item_id", f"'item_id', {dashed}")
        op.execute(f"CREATE TRIGGER purchase_accepted AFTER INSERT ON purchases BEGIN "
                   f"INSERT INTO outbox_events ({_COLUMNS}) VALUES ({_VALUES}, json_object({payload})); END")


def downgrade():
    op.execute("DROP TRIGGER IF EXISTS purchase_accepted" +
               (" ON purchases" if op.get_bind().dialect.name == 'postgresql' else ""))
    if op.get_bind().dialect.name == 'postgresql':
        op.execute("DROP FUNCTION IF EXISTS purchase_accepted_event()")
    op.drop_index('ix_webhook_deliveries_due', table_name='webhook_deliveries')
    op.drop_table('webhook_deliveries')
    op.drop_table('webhook_endpoints')
    op.drop_index('ix_outbox_events_unsequenced', table_name='outbox_events')
    op.drop_index(op.f('ix_outbox_events_purchase_id'), table_name='outbox_events')
    op.drop_index(op.f('ix_outbox_events_fan_id'), table_name='outbox_events')
    op.drop_index(op.f('ix_outbox_events_model_id'), table_name='outbox_events')
    op.drop_table('outbox_events')

"""The purchase answer's hand-compiled dump (web/schemas.py, plain_dumper) equals marshmallow's dump of the same
schema, so PurchaseOut stays the one definition of the answer and of the OpenAPI document."""
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from marshmallow import Schema, fields

from web.schemas import PurchaseOut, dump_purchase, plain_dumper

NOW = datetime(2026, 11, 26, 17, 5, 3, 123456, tzinfo=timezone.utc)


def view(**changes):
    base = dict(
        success=True, purchase_id=uuid.uuid4(), transaction_type="queued", status="queued", token_value=25,
        loyalty_points_awarded=0, queue_position=3, estimated_wait_minutes=12, item_name="Dance \u00e9\u2603",
        menu_id=uuid.uuid4(), item_id=uuid.uuid4(), model_id=uuid.uuid4(), fan_id=uuid.uuid4(),
        failure_reason=None, refund_reason=None, idempotency_key="k-1", metadata={"source": "widget", "n": [1, {}]},
        note="a note\nwith a line", anonymous=False, show_id=uuid.uuid4(), created_at=NOW, updated_at=NOW,
        settled_at=NOW + timedelta(seconds=1), started_at=None, completed_at=None, failed_at=None, refunded_at=None,
        escrow_deadline=NOW + timedelta(hours=24),
        toy={"status": "pending", "position": 2, "starts_at": NOW, "ends_at": None, "reason": None},
        status_url="/menu/purchase/x/status")
    base.update(changes)
    return base


@pytest.mark.parametrize("values", [
    view(),
    view(status="pending", queue_position=None, estimated_wait_minutes=None, settled_at=None, escrow_deadline=None,
         toy=None, fan_id=None, show_id=None, metadata=None, note=None, idempotency_key=None),
    view(status="failed", success=False, failure_reason="insufficient_balance", anonymous=True),
    {k: v for k, v in view().items() if k not in ("toy", "note")},  # a key left out is left out of both
])
def test_the_plain_dump_of_a_purchase_equals_marshmallows(values):
    assert dump_purchase(values) == PurchaseOut().dump(values)


def test_a_field_type_it_cannot_convert_fails_at_import_time():
    class WithAList(Schema):
        tags = fields.List(fields.String())

    with pytest.raises(TypeError, match="List"):
        plain_dumper(WithAList)

"""The peer: the in-request design (everything a purchase does, inside the request, as the seed spec's design
does it), served by the product's gunicorn line (`bench.peer_app:app`). The same token check (flask-jwt-extended,
the same secret) and body schema as the product, the product's ORM models and ledger functions: one transaction
locks the fan's and the model's accounts, reads the item and menu, checks the balance and the daily limit, pays
the model and awards the points as settlement does for a Queue OFF purchase, inserts the purchase `completed`,
commits and answers 200. What intake's hand-off design is judged against; the books stay balanced."""
import os
import uuid

from flask import Flask, jsonify, request
from flask_jwt_extended import JWTManager, get_jwt, get_jwt_identity, jwt_required
from marshmallow import ValidationError
from sqlalchemy import select

from models.ledger import lock_accounts
from models.menus import Menu, MenuItem
from models.purchases import Purchase, daily_count, purchase_day_of
from models.revenue import own_rate, pay_model, sale_rate
from models.runtime import Runtime
from models.services.settlement import award_points
from models.settings import Settings
from models.types import utcnow
from models.users import parse_uuid
from web.schemas import PurchaseOut, PurchaseRequest

settings = Settings.from_env(os.environ)
runtime = Runtime(settings)
app = Flask(__name__)
app.config.update(JWT_SECRET_KEY=settings.jwt_secret_key, JWT_TOKEN_LOCATION=["headers"])
JWTManager(app)
request_schema, out_schema = PurchaseRequest(), PurchaseOut()


def refuse(status: int, error: str):
    return jsonify(error=error), status


@app.route("/menu/purchase", methods=["POST"])
@jwt_required()
def purchase():
    if get_jwt().get("role") != "fan":
        return refuse(403, "forbidden")
    try:
        body = request_schema.load(request.get_json(silent=True) or {})
    except ValidationError as exc:
        return jsonify(error="invalid_request", details=exc.messages), 422
    fan_id = uuid.UUID(get_jwt_identity())
    menu_id = parse_uuid(body["menu_id"])
    item_id = parse_uuid(body.get("menu_item_id") or body.get("item_id"))
    session = runtime.new_session()
    try:
        found = session.execute(select(MenuItem, Menu).join(Menu, Menu.id == MenuItem.menu_id)
                                .where(MenuItem.id == item_id, Menu.id == menu_id)).first()
        if found is None:
            return refuse(404, "not_found")
        item, menu = found
        if menu.queue_mode != "OFF" or not (item.is_active and menu.is_active):
            return refuse(409, "item_unavailable")  # Queue ON waits for the model: not this design's case
        # The fan's wallet, and the model's accounts the sale credits, locked in account-id order (settlement's
        # lock_accounts); the model's rows are what every concurrent purchase of that model waits for.
        accounts = lock_accounts(session, [fan_id, menu.model_id])
        wallet = accounts.get((fan_id, "wallet"))
        if wallet is None or wallet.balance < item.token_value:
            return refuse(402, "insufficient_balance")
        now = utcnow()
        day = purchase_day_of(now, settings.tz)
        if item.max_daily_purchases is not None and (
                daily_count(session, fan_id, item.id, day) >= item.max_daily_purchases):
            return refuse(422, "daily_limit_reached")
        p = Purchase(
            id=uuid.uuid4(),  # the ledger rows name it before the flush
            fan_id=fan_id, model_id=menu.model_id, menu_id=menu.id, item_id=item.id, item_name=item.name,
            token_value=item.token_value, loyalty_points=item.bonus_loyalty_points,
            estimated_duration_minutes=item.estimated_duration_minutes, transaction_type="immediate",
            queue_priority=0, status="pending", idempotency_key=request.headers.get("Idempotency-Key"),
            client_metadata=body.get("metadata"), note=body.get("note") or None, anonymous=body["anonymous"],
            purchase_day=day, created_at=now,
        )
        # Settlement's Queue OFF step (models/services/settlement.py, settle_pending and _transfer), the
        # transition first so the row is inserted `completed`, and inserted before the ledger rows that name it
        # (no relationship tells the session the order).
        p.fee_bps = sale_rate(session.scalar(select(own_rate(p.model_id))), settings.platform_fee_bps)
        p.transition("completed", now)
        session.add(p)
        session.flush()
        pay_model(session, "purchase", wallet, p, accounts, now, settings.tz)
        award_points(session, p, accounts)
        session.commit()
        return out_schema.dump({
            "success": True, "purchase_id": p.id, "transaction_type": p.transaction_type, "status": p.status,
            "token_value": p.token_value, "loyalty_points_awarded": p.loyalty_points, "item_name": p.item_name,
            "menu_id": p.menu_id, "item_id": p.item_id, "model_id": p.model_id, "fan_id": p.fan_id,
            "idempotency_key": p.idempotency_key, "metadata": p.client_metadata, "note": p.note,
            "anonymous": p.anonymous, "created_at": p.created_at, "updated_at": p.updated_at,
            "settled_at": p.settled_at, "completed_at": p.completed_at,
        }), 200
    finally:
        session.close()  # rolls back a refused purchase's transaction and its locks

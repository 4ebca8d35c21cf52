from __future__ import annotations

from sqlalchemy import select

from models.ledger import Account

from .auth import current_role, current_user_id, role_required
from .deps import db
from .json_body import Blueprint
from .schemas import WalletOut

blp = Blueprint("wallet", __name__, url_prefix="/wallet", description="Balances")

_FIELD_FOR_KIND = {
    "wallet": "token_balance",
    "loyalty": "loyalty_points",
    "earnings": "earnings_balance",
    "escrow": "escrow_balance",
}


@blp.route("", methods=["GET"])
@role_required()
@blp.response(200, WalletOut, example={"user_id": "3f1c2b9e-8d7a-4c55-9a41-0c7e2d6b1a90", "role": "fan",
                                       "token_balance": 450, "loyalty_points": 30})
def get_wallet():
    """The caller's balances: a fan's tokens and loyalty points, a model's earnings and escrow."""
    user_id = current_user_id()
    body = {"user_id": user_id, "role": current_role()}
    for kind, balance in db().execute(select(Account.kind, Account.balance).where(Account.owner_id == user_id)):
        if kind in _FIELD_FOR_KIND:
            body[_FIELD_FOR_KIND[kind]] = balance
    return body

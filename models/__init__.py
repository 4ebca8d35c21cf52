"""SQLAlchemy models and the rules that keep the books (ledger postings, state transitions)."""
from .audit import AuditEvent, audit
from .auth_sessions import AuthSession
from .db import Base
from .ledger import Account, InsufficientFunds, LedgerEntry
from .lovense import LovenseActivation, LovenseLink
from .menus import Menu, MenuItem, MenuWhitelist
from .outbox import OutboxEvent
from .purchases import InvalidTransition, Purchase
from .runtime import Runtime
from .settings import Settings
from .shows import OverlayLink, Show
from .users import Subscription, User
from .webhooks import WebhookDelivery, WebhookEndpoint

__all__ = [
    "Account",
    "AuditEvent",
    "AuthSession",
    "Base",
    "InsufficientFunds",
    "InvalidTransition",
    "LedgerEntry",
    "LovenseActivation",
    "LovenseLink",
    "Menu",
    "MenuItem",
    "MenuWhitelist",
    "OutboxEvent",
    "OverlayLink",
    "Purchase",
    "Runtime",
    "Settings",
    "Show",
    "Subscription",
    "User",
    "WebhookDelivery",
    "WebhookEndpoint",
    "audit",
]

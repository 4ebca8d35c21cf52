"""SQLAlchemy models and the rules that keep the books (ledger postings, state transitions)."""
from .audit import AuditEvent, audit
from .db import Base, get_engine, new_session, session_scope
from .ledger import Account, InsufficientFunds, LedgerEntry
from .lovense import LovenseActivation, LovenseLink
from .menus import Menu, MenuItem, MenuWhitelist
from .purchases import InvalidTransition, Purchase
from .settings import Settings, get_settings
from .users import Subscription, User

__all__ = [
    "Account",
    "AuditEvent",
    "Base",
    "InsufficientFunds",
    "InvalidTransition",
    "LedgerEntry",
    "LovenseActivation",
    "LovenseLink",
    "Menu",
    "MenuItem",
    "MenuWhitelist",
    "Purchase",
    "Settings",
    "Subscription",
    "User",
    "audit",
    "get_engine",
    "get_settings",
    "new_session",
    "session_scope",
]

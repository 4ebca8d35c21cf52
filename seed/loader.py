"""Load menu templates (the platform's format: {"menuTemplates": [...], "metadata": {...}}) for a model.

Templates are validated with the API's own menu schemas (models/menu_schemas.py), so a file loads exactly what
the API would accept; icons may be paths on the platform's host (/icons/kiss.png). Each menu remembers the
template it came from (Menu.template_key = the template's name). Loading a template the model already has:
- the same content: nothing changes ("same");
- other content (the file changed, or the model edited the menu): the difference is reported, and nothing
  changes unless the caller chose what to do (`on_conflict`): "skip" keeps the model's menu, "replace" gives
  it the template's fields and items, "new" loads the template as a further menu.
A file loads whole or not at all (one transaction, committed by the caller).

Delivery hours: an item that does not say (the platform's format has no such field) gets its category's
default (DELIVERY_HOURS_BY_CATEGORY, or `default_delivery_hours` if given), long enough for what it sells, so
the escrow deadline sweep never refunds a custom video a day after it was bought. An explicit
`"delivery_hours": null` keeps the menu's own default."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from marshmallow import ValidationError
from sqlalchemy import exists, select

from models.menu_schemas import MenuTemplatesFile
from models.menus import Menu, MenuItem, create_menu
from models.purchases import Purchase
from models.users import User

STARTER_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "menu_templates.json")
ON_CONFLICT = ("report", "skip", "replace", "new")
# Hours a Queue ON item may wait when its template does not say, by category: a week for made-to-order
# content, calls and experiences (they need scheduling), three days for everything else.
DELIVERY_HOURS_BY_CATEGORY = {"content": 168, "private": 168, "experience": 168}
DELIVERY_HOURS_OTHERWISE = 72
# What "the same template" compares (a menu's name is the template's key; its position is the model's choice).
MENU_FIELDS = ("description", "queue_mode", "visibility", "queue_order", "theme", "delivery_hours_default",
               "is_active")
ITEM_FIELDS = ("name", "description", "token_value", "bonus_loyalty_points", "category", "icon_url", "is_active",
               "max_daily_purchases", "estimated_duration_minutes", "delivery_hours", "lovense_activation")


class TemplateError(Exception):
    """The file cannot be read or does not match the template format; `messages` names the fields."""

    def __init__(self, message: str, messages=None):
        super().__init__(message)
        self.messages = messages


class TemplateConflict(Exception):
    """Templates the model already has with other content, and no choice made: [(name, [differences])]."""

    def __init__(self, differing):
        super().__init__("; ".join(f"{name}: {', '.join(diffs)}" for name, diffs in differing))
        self.differing = differing


@dataclass
class LoadResult:
    created: list[Menu] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # the model has them already, with the same content
    kept: list[tuple[str, list[str]]] = field(default_factory=list)  # differ; the model's menu kept (skip)
    replaced: list[tuple[Menu, list[str]]] = field(default_factory=list)  # differed; now the template's
    added: list[tuple[Menu, list[str]]] = field(default_factory=list)  # differed; loaded as a further menu


def read_templates(path: str = STARTER_FILE, default_delivery_hours: int | None = None) -> list[dict]:
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except (OSError, ValueError) as exc:
        raise TemplateError(f"cannot read {path}: {exc}") from None
    return validate_templates(raw, default_delivery_hours)


def validate_templates(raw, default_delivery_hours: int | None = None) -> list[dict]:
    try:
        templates = MenuTemplatesFile().load(raw)["menuTemplates"]
    except ValidationError as exc:
        raise TemplateError(f"not a menu template file: {exc.messages}", exc.messages) from None
    for template in templates:
        for item in template["items"]:
            if "delivery_hours" not in item:
                item["delivery_hours"] = default_delivery_hours or DELIVERY_HOURS_BY_CATEGORY.get(
                    item.get("category"), DELIVERY_HOURS_OTHERWISE)
    return templates


def load_templates(session, model_id, templates: list[dict], on_conflict: str = "report") -> LoadResult:
    """Create the menus of `templates` the model does not have yet (by template name) and settle the ones it
    has (see the module's docstring). Raises TemplateConflict (on_conflict "report" and a template differs)
    or LimitReached (more menus than allowed); the caller then rolls back."""
    if on_conflict not in ON_CONFLICT:
        raise ValueError(f"on_conflict is one of {ON_CONFLICT}")
    model = session.get(User, model_id)
    if model is None or model.role != "model":
        raise TemplateError("templates load for a model only")
    have = {m.template_key: m for m in session.scalars(select(Menu).where(Menu.model_id == model_id))
            if m.template_key is not None}
    result = LoadResult()
    differing = []
    for template in templates:
        key = template["name"]
        fields = {k: v for k, v in template.items() if k != "items"}
        menu = have.get(key)
        if menu is None:
            menu = create_menu(session, model_id, fields, template["items"], template_key=key)
            result.created.append(menu)
            have[key] = menu
            continue
        diffs = differences(menu, template)
        if not diffs:
            result.skipped.append(key)
        elif on_conflict == "report":
            differing.append((key, diffs))
        elif on_conflict == "skip":
            result.kept.append((key, diffs))
        elif on_conflict == "replace":
            replace_menu(session, menu, fields, template["items"])
            result.replaced.append((menu, diffs))
        else:
            result.added.append((create_menu(session, model_id, fields, template["items"]), diffs))
    if differing:
        raise TemplateConflict(differing)
    return result


def differences(menu: Menu, template: dict) -> list[str]:
    """What differs between the model's menu and the template it was loaded from, as field paths."""
    diffs = [f for f in MENU_FIELDS if f in template and getattr(menu, f) != template[f]]
    want = template["items"]
    # Items a replace retired (bought, so kept switched off after the template's own) are not the menu's now.
    have = [i for i in menu.items if i.is_active or i.display_order < len(want)]
    if len(have) != len(want):
        return diffs + [f"items ({len(have)} here, {len(want)} in the file)"]
    for n, (item, spec) in enumerate(zip(have, want)):
        diffs += [f"items[{n}].{f}" for f in ITEM_FIELDS if getattr(item, f) != spec.get(f, _UNSET.get(f))]
    return diffs


# What an item field is when its template leaves it out (the schema's load defaults fill the rest).
_UNSET = {"description": None, "category": None, "icon_url": None, "max_daily_purchases": None,
          "lovense_activation": None}


def replace_menu(session, menu: Menu, fields: dict, items: list[dict]) -> None:
    """Give `menu` the template's fields and items. An item fans bought keeps its row (purchases point at it),
    switched off and after the new ones; the others are deleted. Purchases keep their own snapshots."""
    for name, value in fields.items():
        if name not in ("name", "display_order"):
            setattr(menu, name, value)
    for old in list(menu.items):
        if session.scalar(select(exists().where(Purchase.item_id == old.id))):
            old.is_active, old.display_order = False, len(items) + old.display_order
        else:
            session.delete(old)
    session.flush()
    for order, spec in enumerate(items):
        session.add(MenuItem(menu_id=menu.id, **{"display_order": order, **spec}))
    session.flush()
    session.expire(menu, ["items"])

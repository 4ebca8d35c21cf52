"""Load menu templates (the platform's format: {"menuTemplates": [...]}) for a model.

Templates are validated with the API's own menu schemas (models/menu_schemas.py), so a file loads exactly what the API would accept. Each
menu remembers the template it came from (Menu.template_key = the template's name): loading a template the
model already has changes nothing, so loading a file twice does not duplicate. A file loads whole or not at
all (one transaction, committed by the caller)."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from marshmallow import ValidationError
from sqlalchemy import select

from models.menu_schemas import MenuTemplatesFile
from models.menus import Menu, create_menu
from models.users import User

STARTER_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "menu_templates.json")


class TemplateError(Exception):
    """The file cannot be read or does not match the template format; `messages` names the fields."""

    def __init__(self, message: str, messages=None):
        super().__init__(message)
        self.messages = messages


@dataclass
class LoadResult:
    created: list[Menu] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # template names the model already has


def read_templates(path: str = STARTER_FILE) -> list[dict]:
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except (OSError, ValueError) as exc:
        raise TemplateError(f"cannot read {path}: {exc}") from None
    return validate_templates(raw)


def validate_templates(raw) -> list[dict]:
    try:
        return MenuTemplatesFile().load(raw)["menuTemplates"]
    except ValidationError as exc:
        raise TemplateError(f"not a menu template file: {exc.messages}", exc.messages) from None


def load_templates(session, model_id, templates: list[dict]) -> LoadResult:
    """Create the menus of `templates` the model does not have yet (by template name). Raises LimitReached
    if the model would have more than the allowed number of menus."""
    model = session.get(User, model_id)
    if model is None or model.role != "model":
        raise TemplateError("templates load for a model only")
    have = set(session.scalars(select(Menu.template_key).where(Menu.model_id == model_id)))
    result = LoadResult()
    for template in templates:
        key = template["name"]
        if key in have:
            result.skipped.append(key)
            continue
        fields = {k: v for k, v in template.items() if k != "items"}
        result.created.append(create_menu(session, model_id, fields, template["items"], template_key=key))
        have.add(key)
    return result

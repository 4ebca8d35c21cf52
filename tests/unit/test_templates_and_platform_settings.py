"""Pure rules of issue 13: the template file's validation and delivery-hour defaults, the platform settings,
and which bearer tokens go to the platform's check."""
import json
import os

import jwt
import pytest

from models.settings import ConfigError, Settings
from seed.loader import DELIVERY_HOURS_BY_CATEGORY, DELIVERY_HOURS_OTHERWISE, TemplateError, validate_templates
from web.platform_auth import is_platform_token

PLATFORM_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data",
                             "platform_menu_templates.json")
PLATFORM = {"PLATFORM_JWT_JWKS_URL": "http://127.0.0.1:1/jwks", "PLATFORM_JWT_ISSUER": "https://p.example",
            "PLATFORM_JWT_AUDIENCE": "perfmenu"}


def test_the_platforms_file_validates_with_relative_icons_and_category_delivery_hours():
    templates = validate_templates(json.load(open(PLATFORM_FILE)))
    items = [i for t in templates for i in t["items"]]
    assert len(templates) == 3 and len(items) == 21
    assert all(i["icon_url"].startswith("/icons/") for i in items)
    for item in items:
        assert item["delivery_hours"] == DELIVERY_HOURS_BY_CATEGORY.get(item["category"], DELIVERY_HOURS_OTHERWISE)


def test_an_explicit_null_keeps_the_menus_default_and_an_option_overrides_the_category():
    raw = {"menuTemplates": [{"name": "M", "items": [
        {"name": "A", "token_value": 5, "category": "content"},
        {"name": "B", "token_value": 5, "category": "content", "delivery_hours": None},
        {"name": "C", "token_value": 5, "category": "content", "delivery_hours": 12}]}]}
    assert [i["delivery_hours"] for i in validate_templates(raw)[0]["items"]] == [168, None, 12]
    assert [i["delivery_hours"] for i in validate_templates(raw, 48)[0]["items"]] == [48, None, 12]


@pytest.mark.parametrize("icon", ["../icons/x.png", "/icons/../../etc/passwd", "//evil.example/x.png",
                                  "javascript:alert(1)", "/a b.png"])
def test_icons_are_web_urls_or_plain_paths(icon):
    raw = {"menuTemplates": [{"name": "M", "items": [{"name": "A", "token_value": 5, "icon_url": icon}]}]}
    with pytest.raises(TemplateError) as err:
        validate_templates(raw)
    assert "icon_url" in str(err.value.messages)


def test_platform_settings_need_an_issuer_and_an_audience_and_only_rs256_or_es256():
    settings = Settings.from_env(PLATFORM)
    assert settings.platform_identity and settings.platform_jwt_algorithms == ("RS256", "ES256")
    assert not Settings.from_env({}).platform_identity
    for missing in ("PLATFORM_JWT_ISSUER", "PLATFORM_JWT_AUDIENCE"):
        with pytest.raises(ConfigError):
            Settings.from_env({k: v for k, v in PLATFORM.items() if k != missing})
    with pytest.raises(ConfigError):
        Settings.from_env({**PLATFORM, "PLATFORM_JWT_ALGORITHMS": "RS256,HS256"})
    with pytest.raises(ConfigError):
        Settings.from_env({**PLATFORM, "PLATFORM_JWT_ROLES": "user:superuser"})
    roles = Settings.from_env({**PLATFORM, "PLATFORM_JWT_ROLES": "user:fan, staff:admin"}).platform_roles
    assert roles == (("user", "fan"), ("staff", "admin"))


def test_only_tokens_not_signed_like_ours_go_to_the_platforms_check():
    ours = jwt.encode({"sub": "1"}, "secret-key-long-enough-for-hs256-tokens", algorithm="HS256")
    assert not is_platform_token(ours)
    assert is_platform_token(jwt.encode({"sub": "1"}, None, algorithm="none"))
    assert not is_platform_token("not a jwt")


def test_the_seeds_menu_items_is_read_as_items():
    raw = {"menuTemplates": [{"name": "M", "menu_items": [{"name": "A", "token_value": 5}]}]}
    assert [i["name"] for i in validate_templates(raw)[0]["items"]] == ["A"]

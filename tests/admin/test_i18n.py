"""The message catalogue: complete in all three languages, and every key in use exists."""

from __future__ import annotations

import re
import string
from pathlib import Path

import pytest

from app.db.engine import ROOT
from app.handlers.admin.base import NAV, AdminHandler
from app.handlers.admin.i18n import CATALOGUE, LANGUAGES, Translator, pick_language
from app.settings import REASONING, ROTATIONS

HANDLERS = ROOT / "app" / "handlers" / "admin"
TEMPLATES = ROOT / "templates"


def placeholders(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


def test_three_languages() -> None:
    assert set(CATALOGUE) == set(LANGUAGES) == {"en", "zh", "fr"}


@pytest.mark.parametrize("lang", ["zh", "fr"])
def test_every_key_in_every_language_with_the_same_placeholders(lang: str) -> None:
    english = CATALOGUE["en"]
    other = CATALOGUE[lang]
    assert sorted(set(english) - set(other)) == []
    assert sorted(set(other) - set(english)) == []
    for key, text in english.items():
        assert other[key].strip(), key
        assert placeholders(other[key]) == placeholders(text), key


def _template_keys() -> set[str]:
    keys: set[str] = set()
    for path in TEMPLATES.glob("*.html"):
        keys |= set(re.findall(r"\bt\('([a-z_.0-9]+)'", path.read_text()))
    return keys


def _code_keys() -> set[str]:
    keys: set[str] = set()
    for path in HANDLERS.glob("*.py"):
        source = path.read_text()
        keys |= set(re.findall(r"\bt\(\s*\"([a-z_.0-9]+)\"", source))
        keys |= set(re.findall(r"FormError\(\s*\"([a-z_.0-9]+)\"", source))
        keys |= set(re.findall(r"_refuse\([^)]*\"(login\.[a-z_]+)\"", source))
    return keys


def _audit_actions() -> set[str]:
    actions: set[str] = set()
    for path in HANDLERS.glob("*.py"):
        actions |= set(re.findall(r"audit\(\s*session,\s*\"([a-z_]+)\"", path.read_text()))
    return actions | {"route_enabled", "route_disabled"}  # built as f"route_{action}d"


def _handler_classes() -> list[type[AdminHandler]]:
    found: list[type[AdminHandler]] = []
    todo = [AdminHandler]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo += cls.__subclasses__()
    return found


def test_keys_used_by_templates_and_handlers_exist() -> None:
    scanned = _template_keys() | _code_keys()
    assert len(scanned) > 150  # the scan found the real usage, not nothing
    # t('state.' + k.state) and the like: the prefix is scanned, its endings added below.
    prefixes = {k for k in scanned if k.endswith((".", "_"))}
    assert prefixes == {
        "keys.state_",
        "state.",
        "rotation.",
        "reasoning.",
        "audit.action.",
        "flash.",
    }
    used = scanned - prefixes
    used |= {label for _, _, label in NAV}
    used |= {f"keys.state_{s}" for s in ("active", "revoked", "expired")}
    used |= {f"state.{s}" for s in ("active", "cooling", "disabled")}
    used |= {f"rotation.{r}" for r in ROTATIONS} | {f"reasoning.{r}" for r in REASONING}
    used |= {f"error.{code}" for code in ("403", "404", "429", "other")}
    used |= {f"audit.action.{a}" for a in _audit_actions()}
    for handler in _handler_classes():
        used |= {f"flash.{msg}" for msg in handler.flashes}
    missing = sorted(used - set(CATALOGUE["en"]))
    assert missing == []


def test_audit_actions_scan_found_them() -> None:
    actions = _audit_actions()
    assert {"sign_in", "key_created", "key_revoked", "upstream_keys_reordered"} <= actions


def test_unused_keys_are_few() -> None:
    # Keys no template or handler names (directly or through a prefix) would be dead text.
    used = _template_keys() | _code_keys()
    prefixes = (
        "nav.",
        "keys.state_",
        "state.",
        "rotation.",
        "reasoning.",
        "error.",
        "audit.action.",
        "flash.",
    )
    dead = [k for k in CATALOGUE["en"] if k not in used and not k.startswith(prefixes)]
    assert dead == []


def test_english_renders_the_stable_labels() -> None:
    t = Translator("en")
    assert t("login.username") == "Username"
    assert t("login.password") == "Password"
    assert t("login.submit") == "Sign in"
    assert t("keys.name") == "Name"
    assert t("keys.create") == "Create key"
    assert t("keys.revoke") == "Revoke"
    assert t("usage.export") == "Export CSV"


def test_translator_fills_placeholders_and_knows_its_keys() -> None:
    t = Translator("fr")
    assert t("keys.exists", name="alice") == "Une clé nommée alice existe déjà."
    assert "keys.exists" in t and "no.such.key" not in t
    assert Translator("xx").lang == "en"
    with pytest.raises(KeyError):
        t("no.such.key")


@pytest.mark.parametrize(
    ("cookie", "expected"), [(None, "en"), ("", "en"), ("fr", "fr"), ("zh", "zh"), ("xx", "en")]
)
def test_pick_language(cookie: str | None, expected: str) -> None:
    assert pick_language(cookie) == expected


def test_templates_have_no_untranslated_text() -> None:
    # Text between tags must come from t(...) or a value; symbols and units may stay.
    allowed = {"Bridgekeeper", "ms"}
    for path in TEMPLATES.glob("*.html"):
        source = re.sub(r"\{#.*?#\}|\{%.*?%\}|\{\{.*?\}\}", " ", path.read_text(), flags=re.S)
        for text in re.findall(r">([^<]+)<", source):
            words = [w for w in text.split() if re.search(r"[^\W\d_]", w) and w not in allowed]
            assert words == [], f"{Path(path).name}: {text.strip()!r}"

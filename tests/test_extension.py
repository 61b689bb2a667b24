"""The registry helper every extension point uses (binder.extension)."""
from __future__ import annotations

import sys
import textwrap
from typing import Protocol

import pytest

from binder.errors import BinderInputError, ModelLoadError
from binder.extension import Registry, missing_members, protocol_check, protocol_members


class Greeter(Protocol):
    greeting: str

    def greet(self, name: str) -> str: ...


class Hello:
    greeting = "hello"

    def greet(self, name: str) -> str:
        return f"{self.greeting} {name}"


class Mute:
    greeting = ""


def test_protocol_members_and_missing():
    assert protocol_members(Greeter) == ["greeting", "greet"]
    assert missing_members(Hello, Greeter) == []
    assert missing_members(Mute(), Greeter) == ["greet"]


def test_register_get_list_with_wildcards():
    reg: Registry = Registry("greeter", check=protocol_check(Greeter))
    reg.register("hello", Hello)

    @reg.register("hello_again")
    class Again(Hello):
        pass

    assert reg.get("hello") is Hello and reg.get("hello_again") is Again
    assert reg.list() == ["hello", "hello_again"] and reg.list("*again") == ["hello_again"]
    assert "hello" in reg and "nope" not in reg and len(reg) == 2
    with pytest.raises(BinderInputError, match=r"unknown greeter 'nope'; registered: hello, hello_again"):
        reg.get("nope")


def test_contract_checked_at_registration_naming_what_is_missing():
    reg: Registry = Registry("greeter", check=protocol_check(Greeter))
    with pytest.raises(BinderInputError, match=r"greeter 'mute' .*Mute\) does not implement Greeter: it lacks greet"):
        reg.register("mute", Mute)
    assert "mute" not in reg


def test_taken_names_are_refused_or_replaced_by_policy():
    strict: Registry = Registry("thing", error=ModelLoadError)
    strict.register("a", 1)
    with pytest.raises(BinderInputError, match="already registered"):
        strict.register("a", 2)
    strict.register("a", 2, replace=True)
    assert strict.get("a") == 2
    with pytest.raises(ModelLoadError, match="unknown thing 'b'"):
        strict.get("b")


def test_builtin_package_modules_register_themselves(tmp_path, monkeypatch):
    pkg = tmp_path / "fake_engines"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "_private.py").write_text("raise RuntimeError('never imported')\n")
    (pkg / "alpha.py").write_text(textwrap.dedent("""
        from fake_engines_registry import REG
        REG.register("alpha", object())
    """))
    (pkg / "broken.py").write_text("raise ImportError('a missing dependency')\n")
    (tmp_path / "fake_engines_registry.py").write_text(
        "from binder.extension import Registry\nREG = Registry('engine', builtin=['fake_engines'])\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import fake_engines_registry

    try:
        reg = fake_engines_registry.REG
        assert reg.list() == ["alpha"]
        assert "fake_engines.broken" in reg.failed and "a missing dependency" in reg.failed["fake_engines.broken"]
    finally:
        for name in [m for m in sys.modules if m.startswith("fake_engines")]:
            del sys.modules[name]


def test_discovery_is_quiet_about_extras_not_installed(tmp_path, monkeypatch, caplog):
    """A module that needs an optional extra the user has not installed is skipped quietly (it
    says how to install it when used); a module that is broken is a warning naming it."""
    import logging

    from binder.extension import import_modules

    package = tmp_path / "discovered_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "needs_extra.py").write_text(
        "from binder.errors import MissingDependencyError\n"
        "raise MissingDependencyError('somepkg', 'a feature', 'someextra')\n")
    (package / "broken.py").write_text("raise RuntimeError('a real bug')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with caplog.at_level(logging.DEBUG, logger="binder.extension"):
        names = import_modules("discovered_pkg")
    assert names == ["discovered_pkg.broken", "discovered_pkg.needs_extra"]
    levels = {r.getMessage().split(":")[0]: r.levelno for r in caplog.records}
    assert levels["could not import discovered_pkg.broken"] == logging.WARNING
    assert levels["could not import discovered_pkg.needs_extra"] == logging.DEBUG

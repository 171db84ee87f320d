"""`bitinglip.core` imports its heavy modules on first use: every exported name still resolves, to the object its
module defines, and importing the package alone brings neither SQLAlchemy nor Litestar."""

from __future__ import annotations

import importlib
import subprocess
import sys

import bitinglip.core as core


def test_every_exported_name_resolves_to_its_modules_object() -> None:
    for name in core.__all__:
        value = getattr(core, name)
        if name in core._LAZY:
            module, attribute = core._LAZY[name]
            assert value is getattr(importlib.import_module(f"bitinglip.core.{module}"), attribute), name


def test_the_lazy_table_and_the_exports_agree() -> None:
    eager = {"BitingLipError", "Conflict", "Forbidden", "InsufficientStorage", "InvalidInput", "NotFound"}
    eager |= {"RateLimited", "SettingsError", "Unauthorized", "Unavailable", "validation_path", "parse_duration"}
    assert set(core._LAZY) | eager == set(core.__all__)
    assert not set(core._LAZY) & eager


def test_an_unknown_name_is_an_attribute_error() -> None:
    try:
        core.NoSuchThing  # type: ignore[attr-defined]  # noqa: B018
    except AttributeError as exc:
        assert "no attribute 'NoSuchThing'" in str(exc)
    else:
        raise AssertionError("no AttributeError")


def test_importing_the_package_imports_no_heavy_module() -> None:
    code = (
        "import sys\nimport bitinglip.core\nfrom bitinglip.core import BitingLipError, parse_duration\n"
        "print(' '.join(m for m in ('sqlalchemy', 'litestar', 'dynaconf', 'structlog', 'msgspec') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout.strip()) == (0, ""), done.stderr

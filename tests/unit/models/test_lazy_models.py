"""`bitinglip.models` imports its modules on first use: every exported name resolves, and the registry alone
brings neither huggingface_hub nor Litestar."""

from __future__ import annotations

import importlib
import subprocess
import sys

import bitinglip.models as models


def test_every_exported_name_resolves_to_its_modules_object() -> None:
    assert set(models._LAZY) == set(models.__all__)
    for name, module in models._LAZY.items():
        assert getattr(models, name) is getattr(importlib.import_module(f"bitinglip.models.{module}"), name), name


def test_the_registry_alone_is_light() -> None:
    code = (
        "import sys\nfrom bitinglip.models import ModelRegistry\n"
        "print(' '.join(m for m in ('huggingface_hub', 'litestar', 'bitinglip.models.hub') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout.strip()) == (0, ""), done.stderr

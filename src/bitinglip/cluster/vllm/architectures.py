"""Which model architectures the installed vLLM serves, cached per vLLM version."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from pathlib import Path

from bitinglip.cluster.vllm.hooks import installed_version
from bitinglip.core import get_logger

log = get_logger(__name__)


def supported_architectures(cache_dir: Path) -> Callable[[], frozenset[str]]:
    """The architectures the installed vLLM serves, handed by the app to the models module (which never imports vllm).

    Importing vLLM's model registry takes seconds (torch), too slow for `bitinglip models search` on every run,
    so the answer is kept in a small file per vLLM version; the server pays nothing (it imports vllm anyway).
    """

    @functools.cache
    def load() -> frozenset[str]:
        version = installed_version()
        cache = cache_dir / f"vllm-{version}-architectures.json"
        if version is not None:
            try:
                return frozenset(json.loads(cache.read_text()))
            except (OSError, ValueError):
                pass
        os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
        from vllm.model_executor.models import ModelRegistry as VllmModels

        archs = frozenset(VllmModels.get_supported_archs())
        if version is not None:
            try:
                cache.parent.mkdir(parents=True, exist_ok=True)
                cache.write_text(json.dumps(sorted(archs)))
            except OSError as e:  # a read-only models.dir: only slower next time
                log.warning("models.architecture_cache_not_written", path=str(cache), error=str(e))
        return archs

    return load

"""A fix for vLLM's CPU build, run inside its worker processes: tokens of a LoRA batch that use no adapter.

vLLM gives a token that uses no adapter the slot index -1. Its GPU kernels skip such tokens; the CPU build's torch
ops (`vllm.lora.ops.torch_ops`) index the stacked adapter weights with it, and -1 is the last slot. Once `max_loras`
adapters are loaded, a base-model request batched beside adapter requests is generated with the adapter in the last
slot (vllm-project/vllm#48421, open against 0.32; seen here: greedy output of the base next to an adapter request
equalled another adapter's). The fix zeroes those tokens' rows of the shrink step (x @ A): the expand step (@ B)
then adds nothing to them, whatever the slot holds.

It must run where the ops run, in vLLM's worker processes, which load vLLM's "general plugins" (entry points of the
group `vllm.general_plugins`) when they start: BitingLip declares `register` as one (pyproject.toml), so every vLLM
engine in this environment gets it, `vllm serve` included. This is a reach into vLLM's private functions, like
those in `hooks.py`, but in another process: it patches only the release it was written for (another one is left
as it is, with a warning), and tests/unit/cluster/test_cpu_lora.py runs it against the real ops.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

from bitinglip.cluster.vllm.hooks import installed_version

WRITTEN_FOR = "0.32.0"
MARK = "bitinglip_masks_unadapted"

# Plain logging: this runs in vLLM's processes, whose logging is vLLM's.
log = logging.getLogger(__name__)


def masked(shrink: Callable[..., None]) -> Callable[..., None]:
    """``shrink`` (vLLM's bgmv_shrink) that leaves zeros in the rows of tokens that use no adapter."""

    @functools.wraps(shrink)
    def shrink_masked(
        inputs: Any, lora_a_weights: Any, output_tensor: Any, lora_indices_tensor: Any, scaling: float = 1.0
    ) -> None:
        shrink(inputs, lora_a_weights, output_tensor, lora_indices_tensor, scaling)
        rows = output_tensor.shape[0]
        output_tensor.masked_fill_((lora_indices_tensor[:rows] < 0).unsqueeze(1), 0)

    setattr(shrink_masked, MARK, True)
    return shrink_masked


def register() -> bool:
    """Patch the CPU build's LoRA shrink op (it may be called more than once per process); True if it is patched."""
    version = installed_version()
    if version != WRITTEN_FOR:
        log.warning("bitinglip: CPU LoRA fix written for vLLM %s, not %s: not applied", WRITTEN_FOR, version)
        return False
    import vllm.lora.ops.torch_ops.lora_ops as ops
    import vllm.lora.punica_wrapper.punica_cpu as punica_cpu

    if getattr(ops.bgmv_shrink, MARK, False):
        return True
    # sgmv_shrink (prefill) calls the module's bgmv_shrink by name; the CPU wrapper imported its own reference.
    patched = masked(ops.bgmv_shrink)
    ops.bgmv_shrink = patched
    punica_cpu.bgmv_shrink = patched
    return True

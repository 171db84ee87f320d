"""The fix of vLLM's CPU LoRA ops (cluster/vllm/cpu_lora.py), run against the real ops: a token that uses no
adapter (slot -1) gets nothing from the shrink step, in decode (bgmv) and prefill (sgmv) alike."""

from __future__ import annotations

from importlib.metadata import entry_points

import torch

from bitinglip.cluster.vllm import cpu_lora


def test_it_is_a_vllm_general_plugin_of_this_package() -> None:
    (plugin,) = [e for e in entry_points(group="vllm.general_plugins") if e.name == "bitinglip_cpu_lora"]
    assert plugin.load() is cpu_lora.register


def test_tokens_without_an_adapter_get_zeros_from_the_shrink() -> None:
    import vllm.lora.punica_wrapper.punica_cpu as punica_cpu

    assert cpu_lora.register() and cpu_lora.register()  # vLLM may load a plugin twice in one process
    assert getattr(punica_cpu.bgmv_shrink, cpu_lora.MARK)
    generator = torch.Generator().manual_seed(0)
    slots = torch.randn(4, 1, 8, 16, generator=generator)  # max_loras 4, rank 8, 16 input features
    x = torch.randn(3, 16, generator=generator)

    decoded = torch.full((3, 8), 7.0)
    punica_cpu.bgmv_shrink(x, slots, decoded, torch.tensor([-1, 0, 3]), 0.5)
    assert torch.equal(decoded[0], torch.zeros(8))  # not the last slot's x @ A, as unpatched
    assert torch.allclose(decoded[1], 0.5 * slots[0, 0] @ x[1], atol=1e-5)
    assert torch.allclose(decoded[2], 0.5 * slots[3, 0] @ x[2], atol=1e-5)

    prefilled = torch.full((3, 8), 7.0)
    seq_start, seq_len = torch.tensor([0, 2]), torch.tensor([2, 1])  # a base sequence of 2 tokens, an adapted one
    punica_cpu.sgmv_shrink(x, slots, prefilled, seq_start, seq_len, torch.tensor([-1, 2]), 2, 2, 3, 1.0)
    assert torch.equal(prefilled[:2], torch.zeros(2, 8))
    assert torch.allclose(prefilled[2], slots[2, 0] @ x[2], atol=1e-5)

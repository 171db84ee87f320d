"""Everything that touches vLLM: the only package of BitingLip that imports it."""

from bitinglip.cluster.vllm.architectures import supported_architectures
from bitinglip.cluster.vllm.args import (
    check_engine_args,
    effective_engine_args,
    engine_env,
    fit_context,
    is_cpu_platform,
    kv_cache_bytes,
)
from bitinglip.cluster.vllm.engine import VllmEngine
from bitinglip.cluster.vllm.fork_server import remove_socket_folder as remove_fork_server_folder
from bitinglip.cluster.vllm.fork_server import start_with_server as start_fork_server
from bitinglip.cluster.vllm.lora import LORA_ARGS, lora_args, lora_bytes, peft_problems, uncovered
from bitinglip.cluster.vllm.tokens import token_bytes

__all__ = [
    "LORA_ARGS",
    "VllmEngine",
    "check_engine_args",
    "effective_engine_args",
    "engine_env",
    "fit_context",
    "is_cpu_platform",
    "kv_cache_bytes",
    "lora_args",
    "lora_bytes",
    "peft_problems",
    "remove_fork_server_folder",
    "start_fork_server",
    "supported_architectures",
    "token_bytes",
    "uncovered",
]

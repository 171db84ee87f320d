"""Pulls through ModelService/PullManager: the real hub client against the hub stand-in, a real SQLite file."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import sys
import time
from collections import namedtuple
from pathlib import Path

import pytest
from pull_support import TINY, MakeService, finished

import hubstub
from bitinglip.core import Conflict, InvalidInput, NotFound
from bitinglip.models import ModelService
from bitinglip.models.checks import ModelCheckFailed
from bitinglip.models.hub import PARTIAL_DIR, GatedRepo, NotEnoughDisk, OfflineError, RepoNotFound, RevisionNotFound
from bitinglip.models.tiny import TINY_CONTEXT

BIN = Path(sys.executable).parent / "bitinglip"


def weight_gets(stub: hubstub.HubStub, weights: bytes) -> list[tuple[str, str, dict[str, str]]]:
    """GETs of the weights' bytes (an LFS file: served by the stand-in's CDN under its sha256)."""
    return [r for r in stub.file_gets() if r[1].startswith(f"/cdn-lfs/{hashlib.sha256(weights).hexdigest()}")]


async def test_pull_records_a_ready_model(
    service: ModelService, stub: hubstub.HubStub, tiny_sha: str, tiny_files: dict[str, bytes], models_dir: Path
) -> None:
    pull = await finished(service.pull(TINY))
    status = pull.status()
    assert status.state == "ready", status.error
    assert status.bytes_done == status.bytes_total == sum(len(d) for d in tiny_files.values())
    assert status.commit_sha == tiny_sha and not status.up_to_date

    row = await service.registry.require(TINY)
    assert (row.state, row.source, row.repo_id, row.revision, row.commit_sha) == (
        "ready",
        "hub",
        TINY,
        "main",
        tiny_sha,
    )
    assert Path(row.path) == (models_dir / "hub" / "org" / "tiny-chat" / tiny_sha).resolve()
    assert (row.architecture, row.context_length, row.dtype) == ("LlamaForCausalLM", TINY_CONTEXT, "bfloat16")
    assert row.parameters is not None and row.parameters > 1_000_000
    assert row.size_bytes == status.bytes_total
    assert row.pull_ref is None and row.error is None
    for name, data in tiny_files.items():
        assert (Path(row.path) / name).read_bytes() == data
    assert not (Path(row.path) / PARTIAL_DIR).exists()


async def test_second_pull_downloads_nothing(service: ModelService, stub: hubstub.HubStub, tiny_sha: str) -> None:
    await finished(service.pull(TINY))
    gets = len(stub.file_gets())
    again = await finished(service.pull(TINY))
    assert again.state == "ready" and again.up_to_date
    assert len(stub.file_gets()) == gets  # one metadata call, no file bytes


async def test_revision_pin_records_the_tag_and_its_sha(
    service: ModelService, stub: hubstub.HubStub, tiny_files: dict[str, bytes]
) -> None:
    v1 = stub.add_repo(TINY, tiny_files, tags={"v1.0": ""})
    v2 = stub.add_repo(TINY, tiny_files | {"README.md": b"# newer\n"})
    assert v1 != v2
    pull = await finished(service.pull(f"{TINY}@v1.0"))
    assert pull.state == "ready", pull.status().error
    row = await service.registry.require(TINY)
    assert (row.revision, row.commit_sha) == ("v1.0", v1)
    assert Path(row.path).name == v1
    # Pinned by sha too, and serving the pinned ref again needs no network.
    before = len(stub.requests)
    path, name = await service.resolve_to_load(f"{TINY}@v1.0")
    assert (path, name) == (Path(row.path), TINY) and len(stub.requests) == before


async def test_an_update_keeps_serving_the_old_commit_until_the_new_one_is_verified(
    service: ModelService, stub: hubstub.HubStub, tiny_files: dict[str, bytes], tiny_sha: str
) -> None:
    stub.add_repo("org/other", tiny_files)  # another model whose weights differ below
    await finished(service.pull(TINY))
    old = await service.registry.require(TINY)

    weights = bytearray(tiny_files["model.safetensors"])
    weights[-1] ^= 0xFF  # same size, same header, one byte of a tensor changed: a new blob
    new_sha = stub.add_repo(TINY, tiny_files | {"model.safetensors": bytes(weights)})
    stub.throttle_bytes_per_s = 3_000_000
    pull = service.pull(TINY)
    seen_during: list[tuple[str, str | None, str]] = []
    while not pull.done.is_set():
        row = await service.registry.require(TINY)
        if pull.state == "downloading":
            seen_during.append((row.state, row.commit_sha, row.path))
        await asyncio.sleep(0.05)
    assert pull.state == "ready", pull.status().error
    assert seen_during, "never saw the update downloading"
    assert set(seen_during) == {("ready", tiny_sha, old.path)}

    row = await service.registry.require(TINY)
    assert (row.state, row.commit_sha, Path(row.path).name) == ("ready", new_sha, new_sha)
    assert not Path(old.path).exists()  # not served: the old commit's folder is gone
    # Unchanged files were linked from the old commit: only the changed weights crossed the network.
    assert pull.status().resumed_bytes == sum(len(d) for d in tiny_files.values()) - len(weights)
    assert (Path(row.path) / "model.safetensors").read_bytes() == bytes(weights)


async def test_the_old_commit_stays_on_disk_while_it_is_served(
    service: ModelService, stub: hubstub.HubStub, tiny_files: dict[str, bytes], tiny_sha: str
) -> None:
    await finished(service.pull(TINY))
    old_path, _ = await service.resolve_to_load(TINY)
    await service.mark_in_use(TINY)
    stub.add_repo(TINY, tiny_files | {"README.md": b"# v2\n"})
    assert (await finished(service.pull(TINY))).state == "ready"
    assert old_path.is_dir() and (await service.registry.require(TINY)).path != str(old_path)


async def test_two_pulls_of_one_model_are_one(
    service: ModelService, stub: hubstub.HubStub, tiny_sha: str, tiny_files: dict[str, bytes]
) -> None:
    stub.throttle_bytes_per_s = 2_000_000  # ~1.5 s: still running when joined again below
    first = service.pull(TINY)
    second = service.pull(TINY)
    assert second is first
    await asyncio.sleep(0.2)
    assert service.pull(TINY).id == first.id  # also once it is downloading
    with pytest.raises(Conflict):  # another revision of the same model must wait
        service.pull(f"{TINY}@{tiny_sha}")
    await finished(first)
    assert first.state == "ready"
    assert len(weight_gets(stub, tiny_files["model.safetensors"])) == 1


async def test_pulls_of_different_models_run_in_parallel(
    service: ModelService, stub: hubstub.HubStub, tiny_files: dict[str, bytes]
) -> None:
    stub.add_repo("org/a", tiny_files)
    other = bytearray(tiny_files["model.safetensors"])
    other[-1] ^= 0xFF
    stub.add_repo("org/b", tiny_files | {"model.safetensors": bytes(other)})
    stub.throttle_bytes_per_s = 3_000_000  # per connection: ~1 s per model
    a, b = service.pull("org/a"), service.pull("org/b")
    overlap = False
    while not (a.done.is_set() and b.done.is_set()):
        sa, sb = a.status(), b.status()
        overlap |= sa.state == sb.state == "downloading" and 0 < sa.bytes_done < sa.bytes_total and sb.bytes_done > 0
        await asyncio.sleep(0.02)
    assert a.state == b.state == "ready"
    assert a.id != b.id and overlap


async def test_not_enough_disk_fails_clearly_before_any_download(
    service: ModelService, stub: hubstub.HubStub, tiny_sha: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _p: usage(10_000_000, 9_999_000, 1_000))
    pull = await finished(service.pull(TINY))
    assert pull.state == "failed" and isinstance(pull.exception, NotEnoughDisk)
    assert "not enough disk space" in pull.exception.message and "needed" in pull.exception.message
    assert pull.exception.status == 507
    assert stub.file_gets() == []
    row = await service.registry.require(TINY)
    assert row.state == "failed" and row.error == pull.exception.message and row.pull_ref is None


@pytest.mark.parametrize("ref", ["../x", "", "org/my model", "/abs/path", "org/" + "n" * 200, "org/name@..", "a/b/c"])
async def test_bad_ids_are_refused_without_network_or_disk(
    service: ModelService, stub: hubstub.HubStub, models_dir: Path, ref: str
) -> None:
    with pytest.raises(InvalidInput):
        service.pull(ref)
    assert stub.requests == []
    assert not models_dir.exists()
    assert await service.registry.list_models() == []


async def test_unsupported_architecture_is_marked_failed_with_the_reason(
    service: ModelService, stub: hubstub.HubStub, tiny_files: dict[str, bytes]
) -> None:
    config = json.loads(tiny_files["config.json"]) | {"architectures": ["NotARealModelForCausalLM"]}
    stub.add_repo("org/weird", tiny_files | {"config.json": json.dumps(config).encode()})
    pull = await finished(service.pull("org/weird"))
    assert pull.state == "failed"
    assert "NotARealModelForCausalLM" in (pull.status().error or "")
    row = await service.registry.require("org/weird")
    assert row.state == "failed" and "NotARealModelForCausalLM" in (row.error or "")
    gets = len(stub.file_gets())
    with pytest.raises(ModelCheckFailed, match="NotARealModelForCausalLM"):  # serving it tries again, and refuses
        await service.resolve_to_load("org/weird")
    assert len(stub.file_gets()) == gets  # the files were all there: checked again, not fetched again
    assert (await service.registry.require("org/weird")).state == "failed"


async def test_missing_tokenizer_or_weights_fail_the_checks(
    service: ModelService, stub: hubstub.HubStub, tiny_files: dict[str, bytes]
) -> None:
    stub.add_repo("org/half", {k: v for k, v in tiny_files.items() if not k.startswith("tokenizer")})
    pull = await finished(service.pull("org/half", ignore=["*.safetensors"]))
    assert pull.state == "failed"
    assert "no weights" in (pull.status().error or "") and "no tokenizer" in (pull.status().error or "")


async def test_gated_repo_without_token_says_a_token_is_needed(
    service: ModelService, stub: hubstub.HubStub, tiny_files: dict[str, bytes], make_service: MakeService
) -> None:
    stub.add_repo("org/gated", tiny_files, gated=True, token="hf_right")
    pull = await finished(service.pull("org/gated"))
    assert isinstance(pull.exception, GatedRepo)
    assert "token" in pull.exception.message and "gated" in pull.exception.message
    assert await service.registry.get("org/gated") is None
    with_token = await make_service(token="hf_right")
    assert (await finished(with_token.pull("org/gated"))).state == "ready"


async def test_unknown_repo_and_revision_are_not_found(service: ModelService, tiny_sha: str) -> None:
    for ref, kind in (("org/ghost", RepoNotFound), (f"{TINY}@nope", RevisionNotFound)):
        pull = await finished(service.pull(ref))
        assert isinstance(pull.exception, kind) and isinstance(pull.exception, NotFound)
    assert await service.registry.list_models() == []


async def test_cancelled_pull_is_resumed_by_the_next_start_up(
    make_service: MakeService, stub: hubstub.HubStub, tiny_sha: str, tiny_files: dict[str, bytes], models_dir: Path
) -> None:
    first = await make_service()
    stub.throttle_bytes_per_s = 1_000_000
    pull = first.pull(TINY)
    part = models_dir / "hub" / "org" / "tiny-chat" / tiny_sha / PARTIAL_DIR / "model.safetensors.part"
    deadline = time.monotonic() + 20
    while not (part.exists() and part.stat().st_size > 300_000):
        assert time.monotonic() < deadline and not pull.done.is_set(), pull.status()
        await asyncio.sleep(0.02)
    await first.stop()  # the server shutting down
    assert pull.state == "cancelled"
    row = await first.registry.require(TINY)
    assert row.state == "pulling" and row.pull_ref == TINY
    kept = part.stat().st_size

    stub.throttle_bytes_per_s = None
    restarted = await make_service()
    await restarted.start(resume_pulls=True)
    resumed = restarted.pulls.active(TINY)
    assert resumed is not None
    await finished(resumed)
    assert resumed.state == "ready" and resumed.status().resumed_bytes >= kept
    assert (await restarted.registry.require(TINY)).state == "ready"
    ranges = [h.get("range") for _m, _p, h in weight_gets(stub, tiny_files["model.safetensors"])]
    assert ranges[-1] is not None and int(ranges[-1].removeprefix("bytes=").rstrip("-")) >= kept > 0


async def test_serving_a_hub_id_pulls_it_first_then_serves_by_name_offline(
    service: ModelService, stub: hubstub.HubStub, tiny_sha: str, make_service: MakeService
) -> None:
    path, name = await service.resolve_to_load(TINY)
    assert name == TINY and path.name == tiny_sha and (path / "config.json").is_file()
    offline = await make_service(offline=True)
    before = len(stub.requests)
    assert await offline.resolve_to_load(TINY) == (path, TINY)  # a ready registry name: no network
    with pytest.raises(OfflineError) as info:
        await offline.resolve_to_load("org/elsewhere")
    assert "not in the registry" in info.value.message and "offline" in info.value.message
    assert len(stub.requests) == before
    with pytest.raises(NotFound):
        await offline.resolve_to_load("no-such-thing")


async def test_rm_refuses_a_served_model_unless_forced_and_removes_its_files(
    service: ModelService, tiny_sha: str, models_dir: Path
) -> None:
    await finished(service.pull(TINY))
    # Served by another live process (here: our parent, which is alive), as the server's row says.
    await service.registry.update(TINY, used_by_pid=os.getppid())
    with pytest.raises(Conflict) as info:
        await service.remove(TINY)
    assert "being served" in info.value.message and str(os.getppid()) in info.value.message
    await service.registry.update(TINY, used_by_pid=2**22 + 12345)  # a dead server: not a reason to refuse
    await service.remove(TINY)
    assert await service.registry.get(TINY) is None
    assert not (models_dir / "hub" / "org" / "tiny-chat").exists()


async def test_rm_of_a_model_being_pulled_needs_force(
    service: ModelService, stub: hubstub.HubStub, tiny_sha: str
) -> None:
    stub.throttle_bytes_per_s = 500_000
    pull = service.pull(TINY)
    while pull.state != "downloading":
        await asyncio.sleep(0.02)
    with pytest.raises(Conflict):
        await service.remove(TINY)
    await service.remove(TINY, force=True)
    assert pull.state == "cancelled" and await service.registry.get(TINY) is None


async def test_an_abandoned_pull_of_another_commit_is_cleaned_up(
    service: ModelService, stub: hubstub.HubStub, tiny_files: dict[str, bytes], models_dir: Path
) -> None:
    old = stub.add_repo(TINY, tiny_files)
    new = stub.add_repo(TINY, tiny_files | {"README.md": b"# new\n"})
    stub.throttle_bytes_per_s = 500_000
    pull = service.pull(f"{TINY}@{old}")
    while pull.status().bytes_done == 0:
        await asyncio.sleep(0.02)
    await service.pulls.cancel(pull)
    repo_dir = models_dir / "hub" / "org" / "tiny-chat"
    assert (repo_dir / old).is_dir()
    stub.throttle_bytes_per_s = None
    assert (await finished(service.pull(TINY))).state == "ready"
    assert [p.name for p in repo_dir.iterdir()] == [new]

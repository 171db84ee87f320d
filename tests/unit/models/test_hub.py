"""bitinglip.models.hub against a local stand-in for the hub, with the real huggingface_hub client."""

from __future__ import annotations

import fcntl
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import hubstub
from bitinglip.core import InvalidInput, NotFound, Unauthorized, Unavailable
from bitinglip.models.hub import (
    PARTIAL_DIR,
    DownloadCancelled,
    DownloadInProgress,
    GatedRepo,
    HubClient,
    HubError,
    HubFile,
    HubUnavailable,
    IntegrityError,
    InvalidRepoId,
    NotEnoughDisk,
    OfflineError,
    RepoNotFound,
    RepoSnapshot,
    RevisionNotFound,
    check_disk_space,
    parse_ref,
    select_files,
    validate_repo_id,
)

KILL_CHILD = Path(__file__).with_name("hub_kill_child.py")
CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama"}


def blob(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def model_files(weights: int = 600_000, seed: int = 1) -> dict[str, bytes]:
    return {
        "config.json": json.dumps(CONFIG).encode(),
        "tokenizer.json": b'{"version": "1.0"}',
        "model.safetensors": blob(weights, seed),
    }


@pytest.fixture(autouse=True)
def _no_ambient_token(monkeypatch: pytest.MonkeyPatch) -> None:
    # The library would otherwise send a token from the environment to the stand-in.
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)


@pytest.fixture
def stub() -> Iterator[hubstub.HubStub]:
    with hubstub.HubStub() as s:
        yield s


@pytest.fixture
def client(stub: hubstub.HubStub) -> HubClient:
    return HubClient(endpoint=stub.url, timeout=10.0, max_retries=3, backoff_s=0.01)


class Progress:
    def __init__(self) -> None:
        self.deltas: list[int] = []
        self._lock = threading.Lock()

    def __call__(self, n: int) -> None:
        with self._lock:
            self.deltas.append(n)

    @property
    def total(self) -> int:
        return sum(self.deltas)


def ranges(stub: hubstub.HubStub, *, lfs: bool = True) -> list[str | None]:
    """Range headers of the GETs that carry file bytes: on the CDN for LFS files, on /resolve/ for the others."""
    where = "/cdn-lfs/" if lfs else "/resolve/"
    return [headers.get("range") for _m, path, headers in stub.file_gets() if where in path]


def assert_same_tree(dest: Path, files: dict[str, bytes]) -> None:
    for path, data in files.items():
        assert (dest / path).read_bytes() == data, path


# ------------------------------------------------------------------------------------------- repo ids


@pytest.mark.parametrize(
    "repo_id", ["org/name", "Qwen/Qwen2.5-0.5B-Instruct", "a/b", "meta-llama/Llama-3.1-8B", "x_1/y.z_2"]
)
def test_validate_repo_id_accepts_plain_ids(repo_id: str) -> None:
    assert validate_repo_id(repo_id) == repo_id


@pytest.mark.parametrize(
    ("repo_id", "words"),
    [
        ("../x", "'..'"),
        ("org/../x", "'..'"),
        ("", "empty"),
        ("org/my model", "whitespace"),
        (" org/name", "whitespace"),
        ("/abs/path", "absolute"),
        ("a/b/c", "exactly one '/'"),
        ("justname", "exactly one '/'"),
        ("org\\name", "backslash"),
        ("org/" + "n" * 93, "longer than 96"),
        ("org/.hidden", "start or end"),
        ("org/name-", "start or end"),
        ("org/na$me", "letters, digits"),
        ("org/", "empty name"),
        ("or--g/name", "'--'"),
    ],
)
def test_validate_repo_id_refuses_bad_ids_without_network(
    stub: hubstub.HubStub, client: HubClient, repo_id: str, words: str
) -> None:
    with pytest.raises(InvalidRepoId) as info:
        validate_repo_id(repo_id)
    assert words in info.value.message
    assert isinstance(info.value, InvalidInput) and info.value.status == 400
    with pytest.raises(InvalidRepoId):
        client.resolve(repo_id)
    assert stub.requests == []


def test_parse_ref() -> None:
    assert parse_ref("org/name") == ("org/name", None)
    assert parse_ref("org/name@v1.0") == ("org/name", "v1.0")
    assert parse_ref("org/name@refs/pr/3") == ("org/name", "refs/pr/3")
    for bad in ("org/name@", "org/name@a b", "org/name@../x", "../x@main"):
        with pytest.raises(InvalidInput):
            parse_ref(bad)


def test_hubfile_refuses_paths_that_escape() -> None:
    for path in ("../x", "/etc/passwd", "a/../../b", "a\\b", "a//b", ""):
        with pytest.raises(InvalidInput):
            HubFile(path=path, size=1)
    assert HubFile(path="sub/dir/file.json", size=3).path == "sub/dir/file.json"


# -------------------------------------------------------------------------------------------- resolve


def test_resolve_main_tag_and_sha(stub: hubstub.HubStub, client: HubClient) -> None:
    files_v1 = model_files(seed=1)
    sha1 = stub.add_repo("org/model", files_v1, tags={"v1": ""})
    files_v2 = {**files_v1, "model.safetensors": blob(700_000, seed=2)}
    sha2 = stub.add_repo("org/model", files_v2)
    assert sha1 != sha2 and len(sha2) == 40

    main = client.resolve("org/model")
    assert (main.commit_sha, main.revision) == (sha2, "main")
    assert client.resolve("org/model", "main").commit_sha == sha2
    tagged = client.resolve("org/model", "v1")
    assert (tagged.commit_sha, tagged.revision) == (sha1, "v1")
    by_sha = client.resolve("org/model", sha1)
    assert by_sha.commit_sha == sha1
    sha_pr = stub.add_repo("org/model", {"config.json": b"{}"}, revision="refs/pr/1")
    assert client.resolve("org/model", "refs/pr/1").commit_sha == sha_pr
    assert client.resolve("org/model").commit_sha == sha2  # another branch did not move main

    weights = {f.path: f for f in main.files}["model.safetensors"]
    assert weights.size == 700_000 and weights.sha256 is not None
    assert {f.path: f for f in main.files}["config.json"].sha256 is None  # small file: not LFS
    assert main.total_size == sum(len(b) for b in files_v2.values())
    assert main.architectures == ("LlamaForCausalLM",)
    assert main.gated is False


def test_unknown_repo_and_revision_raise_not_found(stub: hubstub.HubStub, client: HubClient) -> None:
    stub.add_repo("org/model", model_files())
    with pytest.raises(RepoNotFound) as repo_err:
        client.resolve("org/missing")
    assert isinstance(repo_err.value, NotFound) and repo_err.value.status == 404
    with pytest.raises(RevisionNotFound) as rev_err:
        client.resolve("org/model", "no-such-branch")
    assert isinstance(rev_err.value, NotFound)
    assert "no-such-branch" in rev_err.value.message


def test_gated_repo_needs_a_token(stub: hubstub.HubStub, tmp_path: Path) -> None:
    files = model_files()
    stub.add_repo("org/gated", files, gated=True, token="hf_right")

    with pytest.raises(GatedRepo) as no_token:
        HubClient(endpoint=stub.url).resolve("org/gated")
    assert isinstance(no_token.value, Unauthorized)
    assert "token" in no_token.value.message and "HF_TOKEN" in no_token.value.message

    with pytest.raises(GatedRepo) as wrong:
        HubClient(endpoint=stub.url, token="hf_wrong").resolve("org/gated")
    assert "no access" in wrong.value.message

    good = HubClient(endpoint=stub.url, token="hf_right")
    snapshot = good.resolve("org/gated")
    assert snapshot.gated is True
    good.download(snapshot, list(snapshot.files), tmp_path / "m")
    assert_same_tree(tmp_path / "m", files)
    # The token goes to the hub, never to the CDN the LFS files are redirected to.
    gets = stub.file_gets()
    assert all(h.get("authorization") == "Bearer hf_right" for _m, p, h in gets if "/resolve/" in p)
    assert [p for _m, p, h in gets if p.startswith("/cdn-lfs/")]
    assert all("authorization" not in h for _m, p, h in gets if p.startswith("/cdn-lfs/"))

    # Files fetched without the token are refused too, with the same error.
    with pytest.raises(GatedRepo):
        HubClient(endpoint=stub.url).download(snapshot, list(snapshot.files), tmp_path / "other")


def test_token_never_shown(stub: hubstub.HubStub) -> None:
    client = HubClient(endpoint=stub.url, token="hf_secret_value")
    assert "hf_secret_value" not in repr(client) and "hf_secret_value" not in str(client)


def test_hub_listing_an_unsafe_path_is_refused(stub: hubstub.HubStub, client: HubClient) -> None:
    stub.add_repo("org/evil", {"config.json": b"{}", "../escape.txt": b"x"})
    with pytest.raises(HubError, match="unusable file"):
        client.resolve("org/evil")


def test_unreachable_or_failing_hub_is_unavailable(stub: hubstub.HubStub, client: HubClient, tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(HubUnavailable) as down:
        HubClient(endpoint=f"http://127.0.0.1:{port}", timeout=2.0).resolve("org/model")
    assert isinstance(down.value, Unavailable) and down.value.status == 503

    stub.add_repo("org/model", model_files())
    snapshot = client.resolve("org/model")
    stub.force_status = 503
    with pytest.raises(HubUnavailable):
        client.resolve("org/model")
    with pytest.raises(HubUnavailable):
        client.download(snapshot, list(snapshot.files), tmp_path / "m")
    assert len(stub.file_gets()) == client.max_retries + 1  # retried, then gave up


NO_SUCH_HOST = "http://bitinglip-no-such-host.invalid"  # .invalid never resolves (RFC 2606)


def refused_endpoint() -> str:
    with socket.socket() as s:  # bound, then closed: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.mark.parametrize("call", ["search", "resolve"])
@pytest.mark.parametrize("where", ["refused", "unresolvable"])
def test_unreachable_hub_fails_at_once(where: str, call: str) -> None:
    # The library retries its paged API calls (list_models) on connection errors for ~23 s; we must not wait.
    endpoint = refused_endpoint() if where == "refused" else NO_SUCH_HOST
    client = HubClient(endpoint=endpoint, timeout=10.0)  # default retries: the ones a download would get
    start = time.monotonic()
    with pytest.raises(HubUnavailable) as info:
        if call == "search":
            client.search("llama")
        else:
            client.resolve("org/model")
    elapsed = time.monotonic() - start
    assert elapsed < 3.0, f"{call} against a {where} hub took {elapsed:.1f} s"
    assert f"the hub at {endpoint} cannot be reached" in info.value.message
    assert info.value.status == 503


def test_search_reachability_check_sends_no_token(stub: hubstub.HubStub) -> None:
    stub.add_repo("org/llama-small", model_files())
    client = HubClient(endpoint=stub.url, token="hf_secret_value")
    assert [h.repo_id for h in client.search("llama")] == ["org/llama-small"]
    heads = stub.requests_for("HEAD")
    assert heads and all("authorization" not in h for _m, _p, h in heads)
    assert all(h.get("authorization") == "Bearer hf_secret_value" for _m, _p, h in stub.requests_for("GET"))


# ----------------------------------------------------------------------------------------- selection


def hf(path: str, size: int = 10) -> HubFile:
    return HubFile(path=path, size=size)


def test_select_files_prefers_safetensors() -> None:
    repo = [
        hf("config.json"),
        hf("generation_config.json"),
        hf("tokenizer.json"),
        hf("tokenizer_config.json"),
        hf("special_tokens_map.json"),
        hf("tokenizer.model"),
        hf("chat_template.jinja"),
        hf("README.md"),
        hf("LICENSE"),
        hf(".gitattributes"),
        hf("model-00001-of-00002.safetensors"),
        hf("model-00002-of-00002.safetensors"),
        hf("model.safetensors.index.json"),
        hf("pytorch_model.bin"),
        hf("pytorch_model.bin.index.json"),
        hf("model.gguf"),
        hf("flax_model.msgpack"),
        hf("tf_model.h5"),
        hf("onnx/model.onnx"),
        hf("onnx/config.json"),
        hf("openvino/openvino_model.bin"),
        hf("modeling_custom.py"),
        hf("consolidated.safetensors"),
    ]
    kept = {f.path for f in select_files(repo)}
    assert kept == {
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "tokenizer.model",
        "chat_template.jinja",
        "README.md",
        "LICENSE",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
    }


def test_select_files_falls_back_to_bin_without_safetensors() -> None:
    repo = [
        hf("config.json"),
        hf("pytorch_model-00001-of-00002.bin"),
        hf("pytorch_model-00002-of-00002.bin"),
        hf("pytorch_model.bin.index.json"),
        hf("training_args.bin"),
        hf("model.gguf"),
        hf("onnx/model.onnx"),
    ]
    kept = {f.path for f in select_files(repo)}
    assert kept == {
        "config.json",
        "pytorch_model-00001-of-00002.bin",
        "pytorch_model-00002-of-00002.bin",
        "pytorch_model.bin.index.json",
    }


def test_select_files_applies_allow_and_ignore_patterns() -> None:
    repo = [hf("config.json"), hf("tokenizer.json"), hf("README.md"), hf("model.safetensors")]
    allowed = select_files(repo, allow_patterns=["*.json", "*.safetensors"])
    assert [f.path for f in allowed] == ["config.json", "tokenizer.json", "model.safetensors"]
    ignored = select_files(repo, ignore_patterns=["README*", "tokenizer.*"])
    assert [f.path for f in ignored] == ["config.json", "model.safetensors"]
    # Patterns narrow the default choice; they cannot bring back what vLLM does not use.
    assert select_files([hf("model.safetensors"), hf("model.gguf")], allow_patterns=["*.gguf"]) == []


# ------------------------------------------------------------------------------------------- download


def test_download_writes_identical_bytes_and_skips_what_is_there(
    stub: hubstub.HubStub, client: HubClient, tmp_path: Path
) -> None:
    files = {
        **model_files(weights=900_000),
        "additional_chat_templates/tool.jinja": b"{{ x }}",
        "added_tokens.json": b"",  # empty: written without a request
    }
    stub.add_repo("org/model", files)
    snapshot = client.resolve("org/model")
    dest = tmp_path / "m"

    first = Progress()
    client.download(snapshot, list(snapshot.files), dest, progress=first)
    assert_same_tree(dest, files)
    assert first.total == snapshot.total_size
    assert all(d > 0 for d in first.deltas)
    assert not (dest / PARTIAL_DIR).exists()
    gets = len(stub.file_gets())
    assert gets >= len(files)

    second = Progress()
    client.download(snapshot, list(snapshot.files), dest, progress=second)
    assert len(stub.file_gets()) == gets  # nothing fetched again
    assert second.deltas == [snapshot.total_size]  # all of it reported as done, at once

    # A damaged final file is not trusted: it is fetched again.
    (dest / "model.safetensors").write_bytes(blob(900_000, seed=99))
    client.download(snapshot, list(snapshot.files), dest)
    assert_same_tree(dest, files)
    assert len(stub.file_gets()) > gets


def test_dropped_connection_is_resumed_in_the_same_call(
    stub: hubstub.HubStub, client: HubClient, tmp_path: Path
) -> None:
    files = model_files(weights=1_000_000)
    stub.add_repo("org/model", files)
    snapshot = client.resolve("org/model")
    weights = [f for f in snapshot.files if f.path == "model.safetensors"]

    stub.drop_after_bytes = 300_000
    progress = Progress()
    client.download(snapshot, weights, tmp_path, progress=progress)

    assert (tmp_path / "model.safetensors").read_bytes() == files["model.safetensors"]
    assert stub.drop_after_bytes is None  # the drop did happen
    sent = ranges(stub)
    resumed = [r for r in sent if r is not None]
    assert len(resumed) == 1
    offset = int(resumed[0].removeprefix("bytes=").removesuffix("-"))
    assert 0 < offset <= 300_000
    assert progress.total == 1_000_000


def test_killed_download_resumes_with_a_range_request(stub: hubstub.HubStub, tmp_path: Path) -> None:
    files = model_files(weights=2_000_000, seed=7)
    sha = stub.add_repo("org/model", files)
    dest = tmp_path / "m"
    part = dest / PARTIAL_DIR / "model.safetensors.part"
    stub.throttle_bytes_per_s = 400_000  # ~5 s for the weights: plenty of time to kill it half-way

    child = subprocess.Popen(
        [sys.executable, str(KILL_CHILD), stub.url, "org/model", sha, str(dest)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    hubstub.kill_when(child, lambda: part.exists() and part.stat().st_size >= 200_000, 20, "writing the weights")
    assert child.returncode == -signal.SIGKILL
    kept = part.stat().st_size
    assert 0 < kept < 2_000_000
    assert not (dest / "model.safetensors").exists()

    stub.throttle_bytes_per_s = None
    before = len(ranges(stub))
    client = HubClient(endpoint=stub.url, backoff_s=0.01)
    snapshot = client.resolve("org/model", sha)
    progress = Progress()
    client.download(snapshot, list(snapshot.files), dest, progress=progress)

    assert_same_tree(dest, files)
    after = ranges(stub)[before:]
    assert f"bytes={kept}-" in after
    assert progress.deltas[0] >= kept  # what was on disk is reported first, once
    assert progress.total == snapshot.total_size
    assert not part.exists()


def test_cancel_keeps_the_partial_and_a_corrupt_partial_is_refetched(
    stub: hubstub.HubStub, client: HubClient, tmp_path: Path
) -> None:
    files = model_files(weights=1_500_000, seed=3)
    stub.add_repo("org/model", files)
    snapshot = client.resolve("org/model")
    weights = [f for f in snapshot.files if f.path == "model.safetensors"]
    stub.throttle_bytes_per_s = 2_000_000
    cancel = threading.Event()

    def stop_after_some(n: int) -> None:
        if n > 0:
            seen.append(n)
        if sum(seen) >= 200_000:
            cancel.set()

    seen: list[int] = []
    with pytest.raises(DownloadCancelled):
        client.download(snapshot, weights, tmp_path, progress=stop_after_some, cancel=cancel)
    part = tmp_path / PARTIAL_DIR / "model.safetensors.part"
    kept = part.stat().st_size
    assert 200_000 <= kept < 1_500_000
    assert not (tmp_path / "model.safetensors").exists()

    # Damage the kept bytes: the resumed file fails its sha256, so it is fetched again from byte 0.
    with part.open("r+b") as fh:
        fh.write(b"\x00" * 1000)
    stub.throttle_bytes_per_s = None
    before = len(ranges(stub))
    progress = Progress()
    client.download(snapshot, weights, tmp_path, progress=progress)
    assert (tmp_path / "model.safetensors").read_bytes() == files["model.safetensors"]
    assert ranges(stub)[before:] == [f"bytes={kept}-", None]
    assert progress.total == 1_500_000


def test_partial_of_another_commit_is_not_resumed(stub: hubstub.HubStub, client: HubClient, tmp_path: Path) -> None:
    files = model_files(weights=500_000, seed=4)
    stub.add_repo("org/model", files)
    snapshot = client.resolve("org/model")
    config = [f for f in snapshot.files if f.path == "config.json"]
    part = tmp_path / PARTIAL_DIR / "config.json.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"{ stale")
    sidecar = part.with_name("config.json.part.json")
    sidecar.write_text(json.dumps({"repo_id": "org/model", "commit_sha": "0" * 40, "path": "config.json", "size": 99}))

    client.download(snapshot, config, tmp_path)
    assert (tmp_path / "config.json").read_bytes() == files["config.json"]
    assert ranges(stub, lfs=False) == [None]


def test_server_ignoring_range_restarts_the_file(stub: hubstub.HubStub, client: HubClient, tmp_path: Path) -> None:
    files = model_files(weights=800_000, seed=5)
    stub.add_repo("org/model", files)
    snapshot = client.resolve("org/model")
    weights = [f for f in snapshot.files if f.path == "model.safetensors"]
    stub.honour_range = False
    stub.drop_after_bytes = 100_000
    progress = Progress()
    client.download(snapshot, weights, tmp_path, progress=progress)
    assert (tmp_path / "model.safetensors").read_bytes() == files["model.safetensors"]
    assert ranges(stub)[-1] is not None  # asked for the rest, got the whole file: started over
    assert any(d < 0 for d in progress.deltas)  # the discarded bytes are taken back...
    assert progress.total == 800_000  # ...so the sum still matches the file


def test_size_or_hash_mismatch_is_an_integrity_error(stub: hubstub.HubStub, client: HubClient, tmp_path: Path) -> None:
    files = model_files(weights=300_000, seed=6)
    stub.add_repo("org/model", files)
    snapshot = client.resolve("org/model")
    weights = [f for f in snapshot.files if f.path == "model.safetensors"]

    stub.tamper("org/model", "model.safetensors", files["model.safetensors"][:-10])
    with pytest.raises(IntegrityError, match="300000 bytes"):
        client.download(snapshot, weights, tmp_path)
    assert not (tmp_path / "model.safetensors").exists()
    assert not (tmp_path / PARTIAL_DIR / "model.safetensors.part").exists()

    stub.tamper("org/model", "model.safetensors", blob(300_000, seed=66))
    with pytest.raises(IntegrityError, match="hash"):
        client.download(snapshot, weights, tmp_path)
    assert not (tmp_path / "model.safetensors").exists()

    # Regular (non-LFS) files are checked against their git blob id.
    stub.tamper("org/model", "config.json", b"{}" + b" " * (len(files["config.json"]) - 2))
    with pytest.raises(IntegrityError):
        client.download(snapshot, [f for f in snapshot.files if f.path == "config.json"], tmp_path)


def test_never_writes_outside_dest(stub: hubstub.HubStub, client: HubClient, tmp_path: Path) -> None:
    stub.add_repo("org/model", {"sub/config.json": b"{}"})
    snapshot = client.resolve("org/model")
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "sub").symlink_to(outside)
    with pytest.raises(InvalidInput, match="outside"):
        client.download(snapshot, list(snapshot.files), dest)
    assert list(outside.iterdir()) == []
    assert stub.file_gets() == []


def test_a_file_being_written_by_another_process_is_left_alone(
    stub: hubstub.HubStub, client: HubClient, tmp_path: Path
) -> None:
    stub.add_repo("org/model", model_files())
    snapshot = client.resolve("org/model")
    part = tmp_path / PARTIAL_DIR / "config.json.part"
    part.parent.mkdir(parents=True)
    with part.open("a+b") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        with pytest.raises(DownloadInProgress):
            client.download(snapshot, [f for f in snapshot.files if f.path == "config.json"], tmp_path)


# ------------------------------------------------------------------------------------ disk, search, offline


def test_check_disk_space(tmp_path: Path) -> None:
    check_disk_space(tmp_path / "not" / "yet" / "there", 1024)
    with pytest.raises(NotEnoughDisk) as info:
        check_disk_space(tmp_path / "not" / "yet" / "there", 1 << 62)
    assert "needed" in info.value.message and "free" in info.value.message
    assert info.value.status == 507


def test_download_checks_disk_space_first(stub: hubstub.HubStub, client: HubClient, tmp_path: Path) -> None:
    stub.add_repo("org/model", {"config.json": b"{}"})
    real = client.resolve("org/model")
    huge = RepoSnapshot(
        repo_id=real.repo_id,
        revision=real.revision,
        commit_sha=real.commit_sha,
        files=(HubFile(path="config.json", size=1 << 62),),
        gated=False,
        architectures=None,
    )
    with pytest.raises(NotEnoughDisk):
        client.download(huge, list(huge.files), tmp_path)
    assert stub.file_gets() == []


def test_search(stub: hubstub.HubStub, client: HubClient) -> None:
    stub.add_repo("org/llama-small", model_files(), downloads=500, likes=1)
    stub.add_repo("org/llama-big", model_files(), downloads=10, likes=90, pipeline_tag="text-generation")
    stub.add_repo("other/llama-mid", model_files(), downloads=100, likes=5)
    stub.add_repo("org/unrelated", model_files(), downloads=1000, likes=1000)

    hits = client.search("llama")
    assert [h.repo_id for h in hits] == ["org/llama-small", "other/llama-mid", "org/llama-big"]
    top = hits[0]
    assert (top.downloads, top.likes, top.task) == (500, 1, "text-generation")
    assert top.architectures == ("LlamaForCausalLM",)
    assert top.last_modified is not None and top.last_modified.startswith("2024-")

    assert client.search("llama", sort="likes")[0].repo_id == "org/llama-big"
    assert len(client.search("llama", limit=2)) == 2
    newest = client.search("llama", sort="last_modified")
    assert newest[0].repo_id == "other/llama-mid"  # added last

    before = len(stub.requests)
    with pytest.raises(InvalidInput):
        client.search("llama", sort="random")
    assert len(stub.requests) == before


def test_offline_mode_makes_no_request(stub: hubstub.HubStub, tmp_path: Path) -> None:
    stub.add_repo("org/model", model_files())
    online = HubClient(endpoint=stub.url)
    snapshot = online.resolve("org/model")
    before = len(stub.requests)

    offline = HubClient(endpoint=stub.url, offline=True)
    with pytest.raises(OfflineError) as info:
        offline.resolve("org/model")
    assert isinstance(info.value, Unavailable)
    with pytest.raises(OfflineError):
        offline.search("llama")
    with pytest.raises(OfflineError):
        offline.download(snapshot, list(snapshot.files), tmp_path)
    assert len(stub.requests) == before
    assert not any(tmp_path.iterdir())


def test_errors_map_to_project_bases() -> None:
    # The gateway renders these by status; a wrong base would give the wrong HTTP answer.
    assert issubclass(RepoNotFound, NotFound) and issubclass(RevisionNotFound, NotFound)
    assert issubclass(GatedRepo, Unauthorized)
    assert issubclass(HubUnavailable, Unavailable) and issubclass(OfflineError, Unavailable)
    assert os.path.basename(KILL_CHILD) == "hub_kill_child.py" and KILL_CHILD.exists()

"""How `bitinglip ps`, `cluster devices`, `tasks` and `batches` show what the server answers: plain tables and
fields for a terminal."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from bitinglip.cli.common import _size, _when

REASON_WIDTH = 48
BAR_WIDTH = 30
# As in bitinglip/tasks/wire.py (the commands here never import the server's packages).
FINAL_TASK = ("succeeded", "failed", "cancelled", "expired")
ACTIVE_BATCH = ("validating", "in_progress", "finalizing", "cancelling")


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = [
        "   ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in [headers, *rows]
    ]
    return "\n".join(lines)


def _shorten(text: str, width: int) -> str:
    text = " ".join(text.split())  # a traceback's lines on one line
    return text if len(text) <= width else text[: width - 1] + "…"


def _elapsed(seconds: float) -> str:
    """12s, 3m05s, 5m, 1h02m."""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s" if s % 60 else f"{s // 60}m"
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s % 3600 // 60 else f"{s // 3600}h"


def _from_now(seconds: float) -> str:
    """4 minutes from now, as `ollama ps` says it."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        if seconds >= size:
            n = int(seconds // size)
            return f"{n} {unit}{'s' if n != 1 else ''} from now"
    return "now"


def _state(d: dict[str, Any]) -> str:
    state = str(d.get("state") or "-")
    if state == "loading" and d.get("loading_for_s") is not None:
        return f"loading {_elapsed(d['loading_for_s'])}"
    if state in ("failed", "stopped") and d.get("reason"):
        return _shorten(f"{state}: {d['reason']}", REASON_WIDTH)
    return state


def _devices(d: dict[str, Any]) -> str:
    kind = str(d.get("device_kind") or "-")
    indices = d.get("devices") or []
    return f"{kind} {','.join(str(i) for i in indices)}" if kind == "gpu" and indices else kind


def _memory(d: dict[str, Any]) -> str:
    memory = d.get("memory") or {}
    if memory.get("held_bytes") is not None:
        return _size(memory["held_bytes"])
    estimate = memory.get("estimate_bytes")
    return f"~{_size(estimate)}" if estimate else "-"  # not measured yet: the estimate it was placed with


def _kv_cache(d: dict[str, Any]) -> str:
    size = (d.get("memory") or {}).get("kv_cache_bytes")
    return _size(size) if size else "-"


def _until(d: dict[str, Any]) -> str:
    if d.get("state") != "ready":
        return "-"
    if d.get("keep_alive_s") is None:
        return "forever"
    if d.get("unloads_in_s") is None:
        return "-"  # in use: the countdown starts when its last request ends
    return _from_now(max(0.0, float(d["unloads_in_s"])))


def _adapters(d: dict[str, Any]) -> str:
    """Its model's LoRA adapters: how many its engines hold loaded of those registered, and which."""
    registered = d.get("adapters") or []
    if not registered:
        return "-"
    held = sorted({a for r in d.get("replicas") or [] for a in r.get("adapters") or []})
    return f"{len(held)}/{len(registered)} loaded" + (f": {_shorten(', '.join(held), 40)}" if held else "")


def _deployments_table(deployments: list[dict[str, Any]]) -> str:
    headers = ("NAME", "MODEL", "STATE", "DEVICES", "MEMORY", "KV-CACHE", "IN-FLIGHT", "UNTIL", "ADAPTERS")
    rows = [
        (
            str(d.get("name")),
            str(d.get("model")),
            _state(d),
            _devices(d),
            _memory(d),
            _kv_cache(d),
            str((d.get("stats") or {}).get("in_flight", 0)),
            _until(d),
            _adapters(d),
        )
        for d in deployments
    ]
    return _table(headers, rows)


def _instances_table(instances: list[dict[str, Any]], now: float) -> str:
    """Every instance on the shared database: the one that answered marked with *, what each serves."""
    headers = ("INSTANCE", "URL", "UP", "SEEN", "DEPLOYMENTS")
    rows = [
        (
            f"{i['id'].rsplit(':', 1)[0]}{' *' if i.get('this') else ''}",
            str(i["url"]),
            _elapsed(max(now - i["started_at"], 0)),
            f"{_elapsed(max(now - i['heartbeat_at'], 0))} ago",
            ", ".join(f"{d['name']} ({d['state']})" for d in i["deployments"]) or "-",
        )
        for i in instances
    ]
    return _table(headers, rows)


def _devices_table(devices: list[dict[str, Any]]) -> str:
    headers = ("INDEX", "KIND", "NAME", "UUID", "MEMORY", "FREE", "UTIL", "TEMP")
    rows = []
    for d in devices:
        uuid = d.get("uuid")
        util, temp = d.get("utilization_percent"), d.get("temperature_c")
        rows.append(
            (
                str(d.get("index", "-")),
                str(d.get("kind", "-")),
                str(d.get("name", "-")),
                _shorten(uuid, 13) if uuid else "-",
                f"{_size(d.get('memory_used_bytes'))} / {_size(d.get('memory_total_bytes'))}",
                _size(d.get("memory_free_bytes")),
                f"{util:.0f}%" if util is not None else "-",
                f"{temp}°C" if temp is not None else "-",
            )
        )
    return _table(headers, rows)


# -- tasks and batches


def _at(ts: float | None) -> str:
    """A unix time the server sent, in local time."""
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts is not None else "-"


def _age(seconds: float) -> str:
    """As _elapsed, in days past the first: 2d, 3d04h."""
    days, rest = divmod(int(max(0.0, seconds)), 86400)
    if not days:
        return _elapsed(rest)
    return f"{days}d{rest // 3600:02d}h" if rest // 3600 else f"{days}d"


def _fields(pairs: Sequence[tuple[str, str]]) -> str:
    """``name:  value`` lines, the values lined up."""
    width = max(len(name) for name, _ in pairs) + 1
    return "\n".join(f"{name + ':':<{width}}  {value}".rstrip() for name, value in pairs)


def _task_error(task: dict[str, Any]) -> str:
    """Why a task ended without a result: the server's error, else its state."""
    error = task.get("error") or {}
    if not error:
        return f"{task['id']} {task['state']}"
    kind = " ".join(str(p) for p in (error.get("status_code"), error.get("type")) if p)
    return f"{task['id']} {task['state']}: {error.get('message') or 'no message'}" + (f" ({kind})" if kind else "")


def _task_result(task: dict[str, Any]) -> str:
    """The generated text: the first choice's message content (chat) or text (completion); else the JSON."""
    result = task.get("result")
    choices = result.get("choices") if isinstance(result, dict) else None
    if not choices:
        return json.dumps(result, indent=2)
    first = choices[0]
    text = first.get("text") if task.get("kind") == "completion" else (first.get("message") or {}).get("content")
    return text if isinstance(text, str) else json.dumps(first, indent=2)  # a tool call, say


def _task_summary(task: dict[str, Any]) -> str:
    """One line on a finished task: its id, its tokens, how long it ran (what `tasks submit --wait` puts on
    stderr beside the text)."""
    parts = [f"{task['id']} {task['state']}"]
    result = task.get("result")
    usage = result.get("usage") if isinstance(result, dict) else None
    if isinstance(usage, dict):
        parts.append(f"{usage.get('prompt_tokens', 0)} prompt + {usage.get('completion_tokens', 0)} completion tokens")
    started, finished = task.get("started_at"), task.get("finished_at")
    if started is not None and finished is not None:
        parts.append(f"ran {finished - started:.1f} s")
    return ", ".join(parts)


def _task_state(task: dict[str, Any]) -> str:
    state = str(task.get("state") or "-")
    message = (task.get("error") or {}).get("message")
    return _shorten(f"{state}: {message}", REASON_WIDTH) if state == "failed" and message else state


def _tasks_table(tasks: list[dict[str, Any]], now: float) -> str:
    headers = ("ID", "KIND", "MODEL", "STATE", "PRIO", "ATTEMPTS", "AGE")
    rows = [
        (
            str(t.get("id")),
            str(t.get("kind")),
            str(t.get("model")),
            _task_state(t),
            str(t.get("priority", 0)),
            f"{t.get('attempts', 0)}/{t.get('max_attempts', '-')}",
            _age(now - t["created_at"]) if t.get("created_at") is not None else "-",
        )
        for t in tasks
    ]
    return _table(headers, rows)


def _task_fields(task: dict[str, Any]) -> str:
    pairs = [
        ("id", str(task["id"])),
        ("kind", str(task.get("kind"))),
        ("model", str(task.get("model"))),
        ("state", str(task.get("state"))),
        ("priority", str(task.get("priority", 0))),
        ("attempts", f"{task.get('attempts', 0)} of {task.get('max_attempts', '-')}"),
    ]
    if task.get("idempotency_key"):
        pairs.append(("key", str(task["idempotency_key"])))
    if task.get("batch_id"):
        pairs.append(("batch", f"{task['batch_id']} (custom_id {task.get('custom_id')})"))
    pairs += [(name, _at(task.get(f"{name}_at"))) for name in ("created", "started", "finished")]
    return _fields(pairs)


def _counts(batch: dict[str, Any]) -> tuple[int, int, int]:
    """Lines ended (completed or failed), all lines, and failed ones."""
    counts = batch.get("request_counts") or {}
    failed = int(counts.get("failed") or 0)
    return int(counts.get("completed") or 0) + failed, int(counts.get("total") or 0), failed


def _batch_errors(batch: dict[str, Any]) -> list[str]:
    """What failed the batch (its input file), one line each, with the file's line numbers."""
    errors = (batch.get("errors") or {}).get("data") or []
    return [
        (f"line {e['line']}: " if e.get("line") is not None else "") + f"{e.get('message')} ({e.get('code')})"
        for e in errors
    ]


def _batch_progress(batch: dict[str, Any], elapsed: float, bar: bool) -> str:
    """A progress bar (``bar``, for a terminal) or a plain line (for a log) of a batch running ``elapsed`` s."""
    done, total, failed = _counts(batch)
    status = batch.get("status")
    if not total:
        return f"{batch['id']} {status} … {_elapsed(elapsed)}"
    share = done / total
    rate = f"{done / elapsed:.1f} lines/s" if elapsed > 0 else "- lines/s"
    bad = f", {failed} failed" if failed else ""
    if bar:
        filled = int(share * BAR_WIDTH)
        drawn = "█" * filled + "░" * (BAR_WIDTH - filled)
        return f"{status} {drawn} {done}/{total} {share:.0%}{bad}, {_elapsed(elapsed)}, {rate}"
    return f"{batch['id']} {status}: {done}/{total} done ({share:.0%}){bad}, {_elapsed(elapsed)}, {rate}"


def _batches_table(batches: list[dict[str, Any]]) -> str:
    headers = ("ID", "STATUS", "DONE/TOTAL", "FAILED", "ENDPOINT", "CREATED")
    rows = []
    for b in batches:
        done, total, failed = _counts(b)
        created = b.get("created_at")
        rows.append(
            (
                str(b.get("id")),
                str(b.get("status")),
                f"{done}/{total}",
                str(failed),
                str(b.get("endpoint")),
                _when(datetime.fromtimestamp(created) if created is not None else None),
            )
        )
    return _table(headers, rows)


def _batch_fields(batch: dict[str, Any]) -> str:
    done, total, failed = _counts(batch)
    usage = batch.get("usage")
    pairs = [
        ("id", str(batch["id"])),
        ("status", str(batch.get("status"))),
        ("endpoint", str(batch.get("endpoint"))),
        ("window", str(batch.get("completion_window"))),
        ("requests", f"{done}/{total} done, {failed} failed"),
        ("input file", str(batch.get("input_file_id") or "-")),
        ("output file", str(batch.get("output_file_id") or "-")),
        ("error file", str(batch.get("error_file_id") or "-")),
    ]
    if usage:
        tokens = f"{usage.get('input_tokens')} in + {usage.get('output_tokens')} out"
        pairs.append(("tokens", f"{tokens} = {usage.get('total_tokens')}"))
    if batch.get("metadata"):
        pairs.append(("metadata", ", ".join(f"{k}={v}" for k, v in batch["metadata"].items())))
    for key in ("created", "in_progress", "finalizing", "completed", "failed", "expired", "cancelling", "cancelled"):
        if batch.get(f"{key}_at") is not None:
            pairs.append((key.replace("_", " "), _at(batch[f"{key}_at"])))
    if batch.get("expires_at") is not None and batch.get("status") in ACTIVE_BATCH:
        pairs.append(("expires", _at(batch["expires_at"])))
    text, errors = _fields(pairs), _batch_errors(batch)
    return (text + "\nerrors:" + "".join(f"\n  {line}" for line in errors)) if errors else text


def _json(value: Any) -> str:
    """msgspec's JSON of ``value`` (structs, dataclasses, datetimes included), as text."""
    import msgspec

    return msgspec.json.encode(value).decode()


def _print_json(value: Any) -> None:
    print(_json(value))

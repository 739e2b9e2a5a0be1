"""Deterministic fault injection for the reliability tests; a no-op unless `EDS_FAULT` is set.

`EDS_FAULT` is a comma-separated list of `<point>[@<n>][:<action>]`:

- `<point>`: a name passed to `inject()` by step code (`extract.mid_copy`, `extract.source_lost`, `publish.after_upload_before_manifest`,
  `publish.after_manifest`, `consolidate.mid_merge`, `transfer.before_manifest`), or `s3.<Operation>` for any S3
  call of our clients (`s3.UploadPart`, `s3.CompleteMultipartUpload`, `s3.PutObject`, …);
- `@<n>`: fire at the n-th time the point is reached in this process (default: the first);
- `<action>`: `raise` (default, `InjectedFault`), `exit` (the process dies at once, like a killed worker:
  no `finally`, no cleanup), `unreachable` (a connection error, as if the endpoint were down), `terminate` (PostgreSQL ends
  the step's session, as when the server restarts; points that pass `conn=`).

Never set in production; nothing here reads data.
"""

from __future__ import annotations

import os
from collections import Counter

ENV = "EDS_FAULT"
_seen: Counter[str] = Counter()


class InjectedFault(RuntimeError):
    """Raised at an injection point named in EDS_FAULT."""


def _rules(spec: str) -> list[tuple[str, int, str]]:
    out = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        head, _, action = item.partition(":")
        point, _, nth = head.partition("@")
        out.append((point, int(nth or 1), action or "raise"))
    return out


def inject(point: str, **context) -> None:
    """Fail here if EDS_FAULT names this point (and this is the n-th time it is reached)."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    rules = [r for r in _rules(spec) if r[0] == point]
    if not rules:
        return
    _seen[point] += 1
    for _, nth, action in rules:
        if _seen[point] != nth:
            continue
        if action == "exit":
            os._exit(137)  # what SIGKILL leaves behind: nothing flushed, nothing cleaned up
        if action == "unreachable":
            from botocore.exceptions import EndpointConnectionError

            raise EndpointConnectionError(endpoint_url=str(context.get("endpoint", "injected")))
        if action == "terminate" and "conn" in context:  # the server ends a session (restart, crash)
            pid = context.get("pid")
            if pid:
                context["conn"].execute("SELECT pg_terminate_backend(%s)", (pid,))
            else:
                context["conn"].execute("SELECT pg_terminate_backend(pg_backend_pid())")
            return
        raise InjectedFault(f"injected fault at {point}")


def reset() -> None:
    """Forget how many times each point was reached (tests)."""
    _seen.clear()


def s3_hook(model=None, **kwargs) -> None:
    """botocore `before-call.s3` handler: injection point `s3.<OperationName>`."""
    if os.environ.get(ENV) and model is not None:
        inject(f"s3.{model.name}")

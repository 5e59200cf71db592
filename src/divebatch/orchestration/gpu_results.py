"""The results file of the GPU acceptance check (schema ``divebatch-gpu-check/1``): its structure and
its validation, shared by the writer (the repository's ``gpu_check/`` tool, ``bash
replicate/gpu_check.sh``) and the reader (:mod:`divebatch.orchestration.gpu_hours`).

Imports only the standard library: the check imports it before it knows which packages the machine has.
"""

from __future__ import annotations

SCHEMA = "divebatch-gpu-check/1"
MODES = ("gpu", "cpu-check")
STATUSES = ("ok", "failed", "skipped")
PACKAGE_KEYS = {"distribution", "version", "pinned", "error"}
# top-level key -> its type
TOP_LEVEL = {
    "started": str,
    "seconds": (int, float),
    "budget_s": (int, float),
    "machine": dict,
    "packages": dict,
    "checks": dict,
    "skipped": list,
}


class GpuCheckError(ValueError):
    """Bad input to the acceptance check or the GPU-hours table; the message names the option or key,
    the value and what is allowed."""


def _bad(key: str, value, allowed: str) -> GpuCheckError:
    return GpuCheckError(f"invalid results file: {key}={value!r}; allowed: {allowed}")


def validate_results(obj: dict) -> dict:
    """Check a results file's structure (schema ``divebatch-gpu-check/1``).

    Required: ``schema``, ``mode`` (``gpu`` | ``cpu-check``), ``started`` (ISO 8601), ``seconds``
    (float), ``budget_s``, ``machine`` (dict with ``python``, ``device``), ``packages`` (import
    name -> {distribution, version, pinned, error}), ``checks`` (name -> {status in ok | failed |
    skipped, reason (str, required unless ok), seconds, what, result (dict or None)}),
    ``skipped`` (list of {item, reason}).

    Returns:
        ``obj``.
    Raises:
        GpuCheckError: naming the key, the value and what is allowed.
    """
    if obj.get("schema") != SCHEMA:
        raise _bad("schema", obj.get("schema"), SCHEMA)
    if obj.get("mode") not in MODES:
        raise _bad("mode", obj.get("mode"), " | ".join(MODES))
    for key, typ in TOP_LEVEL.items():
        if not isinstance(obj.get(key), typ):
            raise _bad(key, obj.get(key), f"a value of type {getattr(typ, '__name__', 'number')}")
    for key in ("python", "device"):
        if key not in obj["machine"]:
            raise _bad(f"machine.{key}", None, "present")
    for name, info in obj["packages"].items():
        if not isinstance(info, dict) or set(info) != PACKAGE_KEYS:
            raise _bad(f"packages.{name}", info, "{distribution, version, pinned, error}")
    for name, c in obj["checks"].items():
        _check_record(name, c)
    for i, s in enumerate(obj["skipped"]):
        if not (isinstance(s, dict) and s.get("item") and s.get("reason")):
            raise _bad(f"skipped[{i}]", s, "{item, reason}")
    return obj


def _check_record(name: str, c: dict) -> None:
    """One entry of ``checks``: a status, a reason unless ok, seconds and a result (dict or None)."""
    if c.get("status") not in STATUSES:
        raise _bad(f"checks.{name}.status", c.get("status"), " | ".join(STATUSES))
    if c["status"] != "ok" and not c.get("reason"):
        raise _bad(f"checks.{name}.reason", c.get("reason"), "a reason when the status is not ok")
    if not isinstance(c.get("seconds"), (int, float)) or not (c.get("result") is None or isinstance(c["result"], dict)):
        raise _bad(f"checks.{name}", c, "seconds (number) and result (dict or null)")

"""Numbers and tables as text: one formatter for an estimate, ``value ± spread [low, high] (n=k, pairing)``,
and :func:`write_table` (CSV, Markdown, LaTeX).

Every table, claim and reading of :mod:`divebatch.analysis` writes a mean ± sd, a mean ± SEM or a
value with its interval through :func:`estimate`, so the layout is decided in one place:

- ``value``: the point estimate, formatted with ``spec`` (a format spec such as ``".2f"`` or
  ``"+.1f"``, or a function of the number);
- `` ± spread`` when ``spread`` (an sd or a SEM) is finite; then ``unit`` (so ``1.23 ± 0.05x``);
- `` [low, high]`` when ``low`` is finite (the 95 % t-interval of :mod:`divebatch.analysis.stats`);
- `` (label, n=k, pairing)`` when ``n`` is given; with ``n`` < 2 the interval is replaced by
  ``(n=1, no interval)``: one seed has no interval, never a made-up one.

``missing`` is the text for a value that is not finite (``n/a`` by default).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

Spec = str | Callable[[float], str]


def _finite(x) -> bool:
    try:
        return bool(np.isfinite(float(x)))
    except (TypeError, ValueError):
        return False


def _fmt(x: float, spec: Spec) -> str:
    return spec(x) if callable(spec) else format(x, spec)


def estimate(
    value: float,
    spread: float | None = None,
    low: float | None = None,
    high: float | None = None,
    *,
    spec: Spec = ".2f",
    spread_spec: Spec | None = None,
    bound_spec: Spec | None = None,
    unit: str = "",
    n: float | None = None,
    pairing: str = "",
    label: str = "",
    missing: str = "n/a",
) -> str:
    """A point estimate with its spread and interval as text (module docstring).

    Args:
        value: the estimate (any units; ``unit`` names them in the text).
        spread: sd or SEM, shown as `` ± spread`` (None or NaN: left out).
        low, high: the interval's bounds (``low`` None or NaN: left out).
        spec: format of the value; ``spread_spec`` (default: ``spec`` without its sign) of the
            spread; ``bound_spec`` (default: ``spec``) of the bounds.
        unit: text after the value, or after the spread when there is one (``x``, `` pp``).
        n: seeds (or pairs) behind the interval; None or NaN: not shown. With ``n`` < 2 the text
            ends ``(n=1, no interval)`` whatever the bounds.
        pairing: ``paired`` | ``welch`` | ``""``, shown after n.
        label: the interval's name before n (e.g. ``95 % t-interval``).
        missing: the whole text when ``value`` is not finite.
    Returns:
        e.g. ``61.20 ± 0.85``, ``+1.05 [0.20, 1.90] (n=3, paired)``, ``1.12x (n=1, no interval)``.
    """
    if not _finite(value):
        return missing
    if spread_spec is None:
        spread_spec = spec.replace("+", "") if isinstance(spec, str) else spec
    bound_spec = spec if bound_spec is None else bound_spec
    text = _fmt(value, spec)
    if spread is not None and _finite(spread):
        text += f" ± {_fmt(spread, spread_spec)}"
    text += unit
    has_n = n is not None and _finite(n)
    if has_n and int(n) < 2:
        return f"{text} (n={int(n)}, no interval)"
    if low is not None and _finite(low):
        text += " " + interval(low, high, bound_spec)
    if has_n:
        parts = [p for p in (label, f"n={int(n)}", pairing if isinstance(pairing, str) else "") if p]
        text += f" ({', '.join(parts)})"
    return text


def interval(low: float, high: float, spec: Spec = ".2f") -> str:
    """``[low, high]``, both bounds formatted with ``spec`` (NaN prints as ``nan``)."""
    return f"[{_fmt(low, spec)}, {_fmt(high, spec)}]"


def number(value: float, digits: int = 2, unit: str = "", missing: str = "n/a") -> str:
    """``value`` with ``digits`` decimals and ``unit``; ``missing`` when it is not finite."""
    return estimate(value, spec=f".{digits}f", unit=unit, missing=missing)


def _tex_escape(text: str) -> str:
    table = {
        "\\": r"\textbackslash{}",
        "&": r"\&",
        "%": r"\%",
        "$": r"\$",
        "#": r"\#",
        "_": r"\_",
        "{": r"\{",
        "}": r"\}",
        "~": r"\textasciitilde{}",
        "^": r"\textasciicircum{}",
        "|": r"\textbar{}",
    }
    return "".join(table.get(ch, ch) for ch in text)


def write_table(
    numeric: pd.DataFrame, display: pd.DataFrame, stem: str | Path, provenance: str, title: str
) -> list[Path]:
    """Write ``stem.csv`` (numeric, plus a ``provenance`` column), ``stem.md`` and ``stem.tex``
    (formatted; title and provenance as heading/caption and footer).

    Returns:
        The three paths.
    """
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(s) for s in (".csv", ".md", ".tex")]
    numeric.assign(provenance=provenance).to_csv(paths[0], index=False, float_format="%.6g")
    md = display.to_markdown(index=False) if len(display) else "(no rows)"
    paths[1].write_text(f"# {title}\n\n{md}\n\nProvenance: `{provenance}`\n")
    styler = display.style.format(escape="latex").format_index(escape="latex", axis=1).hide(axis="index")
    tex = styler.to_latex(caption=_tex_escape(f"{title}. {provenance}"), hrules=True, position_float="centering")
    tex = tex.replace("±", r"$\pm$")
    paths[2].write_text(f"% generated by divebatch report; {provenance}\n{tex}")
    return paths

"""What the user sees during long steps: one switch (`--no-progress`) for our bars and messages and
for the libraries' own bars (transformers' "Loading weights", huggingface_hub downloads).

`stage(...)` wraps a step that has no inner progress of its own (fitting an expert, encoding a
knowledge base's references): it says what it is doing, shows elapsed time against an estimate
from the last time the same kind of step ran on this machine (seconds per unit, kept in the user
cache folder), and says how long it took.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

# quiet() may overlap (nested, or Runner.run in several threads): a depth count, so the last one
# out restores, instead of each restoring what it saw on entry (which could leave output off)
_lock = threading.Lock()
_state = {"quiet": 0, "restore": None}


def enabled() -> bool:
    return _state["quiet"] == 0


@contextmanager
def quiet(on: bool = True):
    """Inside: no bars or stage messages from us, transformers or huggingface_hub (restored after)."""
    if not on:
        yield
        return
    with _lock:
        _state["quiet"] += 1
        if _state["quiet"] == 1:
            _state["restore"] = _silence_libraries()
    try:
        yield
    finally:
        with _lock:
            _state["quiet"] -= 1
            if _state["quiet"] == 0:
                _state["restore"]()


def _silence_libraries():
    """Turn the libraries' bars off; returns what turns them back on as they were."""
    # transformers asks huggingface_hub's switch when it is imported; a transformers already
    # imported is switched directly (importing it here would cost seconds)
    try:
        import huggingface_hub.utils as hub
    except ImportError:
        hub = None
    hub_was_on = hub is not None and not hub.are_progress_bars_disabled()
    if hub_was_on:
        hub.disable_progress_bars()
    tlog = sys.modules.get("transformers.utils.logging")
    t_was_on = tlog is None or tlog.is_progress_bar_enabled()
    if tlog is not None:
        tlog.disable_progress_bar()

    def restore():
        if hub_was_on:
            hub.enable_progress_bars()
        tlog = sys.modules.get("transformers.utils.logging")
        if tlog is not None and t_was_on:
            tlog.enable_progress_bar()

    return restore


def bar(total: int, desc: str, unit: str = "it", *, enabled_here: bool = True):
    """A tqdm bar on stderr (shows rate and time left), or a silent stand-in."""
    if not (enabled_here and enabled()) or total <= 0:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, desc=desc, dynamic_ncols=True, file=sys.stderr)


class _NoBar:
    def update(self, n=1):
        pass

    def close(self):
        pass


def say(message: str) -> None:
    """One line on stderr that does not break a bar being drawn."""
    if not enabled():
        return
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)


def _rates_file() -> Path | None:
    """Past seconds per unit of each step kind; None when caches are off (MMAD_BOOST_CACHE_DIR=0)."""
    from ..resources import cache_dir

    d = cache_dir("progress")
    return d / "step-rates.json" if d else None


def _load_rates() -> dict:
    try:
        path = _rates_file()
        if path is None:
            return {}
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}  # no or unreadable history: no estimate, never an error


def estimate_s(kind: str, units: int) -> float | None:
    rate = _load_rates().get(kind)
    return float(rate) * units if isinstance(rate, (int, float)) and rate > 0 else None


def _save_rate(kind: str, seconds_per_unit: float) -> None:
    from ..atomic import write_text
    from ..errors import MmadError

    try:
        path = _rates_file()
        if path is None:
            return
        rates = _load_rates()
        rates[kind] = float(f"{seconds_per_unit:.4g}")
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, json.dumps(rates, indent=1, sort_keys=True))
    except (OSError, MmadError):
        pass  # a read-only cache only costs the next estimate


@contextmanager
def stage(what: str, *, kind: str, units: int, unit: str = "images", done: str | None = None):
    """Say `what` is happening (with an estimate when this kind of step ran before), tick elapsed
    seconds on a terminal, then say how long it took. `kind` names the step for the estimate
    (e.g. "fit:patchcore"); `units` is its size (e.g. images)."""
    if not enabled():
        yield
        return
    est = estimate_s(kind, units)
    hint = f"about {_dur(est)} (from the last run of this step here)" if est else "no estimate yet (first time here)"
    say(f"{what}: {units} {unit}, {hint} ...")
    stop = threading.Event()
    ticker = None
    if sys.stderr.isatty():
        ticker = threading.Thread(target=_tick, args=(what, est, stop), daemon=True)
        ticker.start()
    t0 = time.perf_counter()
    try:
        yield
    finally:
        stop.set()
        if ticker is not None:
            ticker.join(timeout=2)
    took = time.perf_counter() - t0
    if units > 0:
        _save_rate(kind, took / units)
    say(f"{done or what}: done in {_dur(took)}")


def _tick(what: str, est: float | None, stop: threading.Event) -> None:
    from tqdm import tqdm

    total = max(1, round(est)) if est else None
    with tqdm(
        total=total,
        desc=what[:40],
        unit="s",
        bar_format="{desc}: {elapsed} elapsed" + (" of ~{total}s {bar}" if total else ""),
        file=sys.stderr,
        leave=False,
        dynamic_ncols=True,
    ) as b:
        t0 = time.perf_counter()
        while not stop.wait(0.5):
            b.n = min(total, time.perf_counter() - t0) if total else time.perf_counter() - t0
            b.refresh()


def _dur(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"

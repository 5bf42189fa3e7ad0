"""The run folder: `run.json` (what produced the answers) and append-only `records*.jsonl`.

Each record is one JSON line written with a single `write` on an O_APPEND descriptor, so a killed
process leaves at most one torn last line, which the next open cuts off.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from pathlib import Path

from ..atomic import atomic_open, write_bytes
from ..errors import MmadError
from ..protocol.record import Record, json_field_kinds

RUN_FILE = "run.json"


def records_name(shard: tuple[int, int] | None = None) -> str:
    return "records.jsonl" if shard is None else f"records.shard-{shard[0]}-of-{shard[1]}.jsonl"


# Types a stored record's fields must have when present, read from the Record dataclass (None where
# its field is optional); `qid` is required everywhere, and scoring needs `image` and `question_type` too.
RECORD_FIELDS: dict[str, tuple[type, ...]] = json_field_kinds(Record)
SCORED_FIELDS = ("qid", "image", "question_type")
REJECTED_SUFFIX = ".rejected"  # `records.jsonl.rejected`: not matched by records*.jsonl


def record_problem(obj, required=("qid",)) -> str | None:
    """What is wrong with one decoded line, or None when it is a usable record."""
    if not isinstance(obj, dict):
        return f"is a JSON {type(obj).__name__}, not a record object"
    for name in required:
        if name not in obj:
            return f"has no {name!r} field"
    for name, kinds in RECORD_FIELDS.items():
        if name not in obj:
            continue
        value = obj[name]
        if not isinstance(value, kinds) or isinstance(value, bool) and bool not in kinds or (name == "qid" and not value):
            return f"field {name!r} must be {' or '.join('null' if k is type(None) else k.__name__ for k in kinds)}"
    return None


def _decode_line(line: bytes):
    try:
        return json.loads(line.decode("utf-8")), None
    except UnicodeDecodeError as e:
        return None, f"is not UTF-8 (byte {e.start})"
    except RecursionError:
        return None, "is nested too deeply"
    except ValueError:
        return None, "is not valid JSON"


def read_records(path: Path, *, repair: bool = False, move_bad: bool = False, required=("qid",)) -> list[dict]:
    """Complete records of one file; a torn last line (killed writer) is ignored, or cut off if `repair`.

    A damaged line elsewhere (not JSON, not UTF-8, not an object, no `qid`, a field of the wrong type)
    is an error naming the file and line, or with `move_bad` it is moved into `<file>.rejected`
    and the file rewritten without it, so no question is counted twice or lost silently."""
    if not path.exists():
        return []
    try:
        data = path.read_bytes()
    except OSError as e:
        raise MmadError(f"{path}: cannot read ({e.strerror}); check the run folder's permissions") from None
    out, bad, good_end, pos, lineno = [], [], 0, 0, 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        if nl < 0:
            break  # no newline: a torn last line, dropped (and cut off when repairing)
        lineno += 1
        line = data[pos:nl]
        pos = nl + 1
        if not line.strip():
            good_end = pos
            continue
        obj, problem = _decode_line(line)
        if problem is None:
            problem = record_problem(obj, required)
        if problem is None:
            out.append(obj)
        elif problem == "is not valid JSON" and pos >= len(data) and not move_bad:
            break  # a torn but newline-ended last line: treated like any torn line
        elif move_bad:
            bad.append(line)
        else:
            raise MmadError(
                f"{path}: line {lineno} {problem}; fix or remove that line, or rerun with --repair to move damaged lines into {path.name}{REJECTED_SUFFIX}"
            )
        good_end = pos
    if move_bad and (bad or good_end < len(data)):
        rejected = path.with_name(path.name + REJECTED_SUFFIX)
        if good_end < len(data):
            bad.append(data[good_end:])
        old = rejected.read_bytes() if rejected.exists() else b""
        write_bytes(rejected, old + b"".join(b.rstrip(b"\n") + b"\n" for b in bad))
        rewrite_records(path, out)
    elif repair and good_end < len(data):
        try:
            with open(path, "r+b") as f:
                f.truncate(good_end)
        except OSError as e:
            raise MmadError(f"{path}: cannot cut the torn last line ({e.strerror}); check the folder's permissions") from None
    return out


def run_records(run_dir: Path, *, repair: bool = False) -> list[dict]:
    """All records of a run folder, shards merged, in file order; `repair` moves damaged lines aside."""
    files = sorted(Path(run_dir).glob("records*.jsonl"))
    if not files:
        raise MmadError(f"{run_dir}: no records*.jsonl found; is this a run folder written by `mmad-boost eval`?")
    out = []
    for f in files:
        lock = lock_records(f) if repair else -1  # never rewrite a file a live run appends to
        try:
            out.extend(read_records(f, move_bad=repair, required=SCORED_FIELDS))
        finally:
            unlock_records(lock)
    return out


def lock_records(path: Path) -> int:
    """Hold `<records>.lock` so two runs cannot append to one records file; the OS drops it if we die."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        return -1
    try:
        fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise MmadError(f"{path.parent}: cannot write in the run folder ({e.strerror}); choose a writable --out folder") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise MmadError(f"{path} is being written by another running `mmad-boost eval`; wait for it to finish or use another --out folder") from None
    try:  # the holder before us may have removed the file after we opened it: lock the one on disk
        same = os.fstat(fd).st_ino == os.stat(f"{path}.lock").st_ino
    except OSError:
        same = False
    if not same:
        os.close(fd)
        return lock_records(path)
    _LOCK_FILES[fd] = f"{path}.lock"
    return fd


_LOCK_FILES: dict[int, str] = {}


def unlock_records(fd: int) -> None:
    """Let go of the lock and remove the lock file (while still holding it, so a waiting run
    re-checks and locks a fresh file), leaving no stray `.lock` in the run folder."""
    if fd >= 0:
        name = _LOCK_FILES.pop(fd, None)
        if name:
            try:
                os.unlink(name)
            except OSError:
                pass
        os.close(fd)


def _jsonable(o):
    """numpy scalars and arrays in a trace become plain JSON values, anything else its text."""
    for conv in ("item", "tolist"):
        f = getattr(o, conv, None)
        if callable(f):
            try:
                return f()
            except (TypeError, ValueError):
                pass
    return str(o)


def clean_text(text: str) -> str:
    """Text that can be stored as UTF-8: surrogate pairs joined, lone surrogates (a model may return
    "Answer: A \\ud800") replaced by U+FFFD, so one odd character never stops a run."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _clean(o):
    if isinstance(o, str):
        return clean_text(o)
    if isinstance(o, dict):
        return {_clean(k) if isinstance(k, str) else k: _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    return o


def encode_record(record: Record | dict) -> bytes:
    """One JSON line, always encodable (see clean_text)."""
    if isinstance(record, Record):
        record = record.to_json()
    try:
        return (json.dumps(record, ensure_ascii=False, default=_jsonable) + "\n").encode("utf-8")
    except UnicodeEncodeError:
        return (json.dumps(_clean(record), ensure_ascii=False, default=_jsonable) + "\n").encode("utf-8")


class RecordWriter:
    def __init__(self, path: Path, durable: bool = False):
        self.path = path
        self.durable = durable
        self._lock = threading.Lock()
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, record: Record | dict) -> None:
        line = memoryview(encode_record(record))
        with self._lock:
            try:
                while line:  # a short write (rare, e.g. near a full disk) must not leave half a line
                    line = line[os.write(self._fd, line) :]
                if self.durable:
                    os.fsync(self._fd)
            except OSError as e:
                raise MmadError(f"{self.path}: cannot write a record ({e.strerror}); free disk space or fix permissions, then rerun to resume") from None

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


def rewrite_records(path: Path, records: list[dict]) -> None:
    """Replace a records file atomically (used to drop errored records before retrying them)."""
    with atomic_open(path, "wb") as f:
        for r in records:
            f.write(encode_record(r))


@contextlib.contextmanager
def folder_lock(run_dir: Path):
    """An exclusive OS lock on the run folder itself (no lock file left behind): shards started at
    the same moment check and write run.json one after the other."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    fd = os.open(run_dir, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def read_run_file(path: Path) -> dict:
    """run.json as a dict with an `identity` object; a one-line error naming the file otherwise."""
    try:
        old = json.loads(path.read_bytes().decode("utf-8"))
    except (ValueError, RecursionError):  # not JSON, not UTF-8, nested absurdly
        raise MmadError(f"{path} is not valid JSON; restore it or use a new --out folder") from None
    except OSError as e:
        raise MmadError(f"{path}: cannot read ({e.strerror}); check the run folder's permissions") from None
    if not isinstance(old, dict) or not isinstance(old.get("identity", {}), dict):
        raise MmadError(f"{path} is not a run description (an object with an 'identity' object); restore it or use a new --out folder")
    return old


def check_run_config(run_dir: Path, identity: dict, *, force: bool = False, extra: dict | None = None) -> None:
    """Refuse to mix answers of different configurations in one run folder; `extra` (e.g. data_root) is stored, not checked."""
    path = run_dir / RUN_FILE
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MmadError(f"--out {run_dir}: cannot create the run folder ({e.strerror}); choose a writable folder") from None
    with folder_lock(run_dir):
        if path.exists():
            old_id = read_run_file(path).get("identity", {})
            diffs = [k for k in sorted(set(old_id) | set(identity)) if old_id.get(k) != identity.get(k)]
            if diffs and not force:
                k = diffs[0]
                raise MmadError(
                    f"{run_dir} was written by another configuration ({k}: {old_id.get(k)!r} there, {identity.get(k)!r} now); "
                    "use a new --out folder, or pass --force-mix to add these answers anyway"
                )
            if not diffs:
                return
        write_bytes(path, json.dumps({"identity": identity, **(extra or {})}, indent=2, default=str).encode("utf-8"))

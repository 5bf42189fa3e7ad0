"""Evaluation on a Ray cluster: per-image work fanned out to Ray actors, records gathered here.

Each image goes to one actor, which loads its images, runs the model's `prepare` once and asks
all of that image's questions; the driver appends the records to the run folder as they arrive,
with the same resume rule and run.json identity check as the local `Runner`.

The model reaches the workers in one of three ways:
- a SPEC string (`"hf:/models/llava"`): each actor builds the model itself (weights load on the
  worker, e.g. on its GPU);
- `model_factory`: a zero-argument callable run inside each actor (what the CLI sends);
- a model object: sent through Ray's own serialiser (cloudpickle), so it must be serialisable.
Workers must see the data root (and the run folder, for expert pictures) at the same paths:
use a shared file system. Import of ray happens in `run`, so the CLI stays fast.
"""
from __future__ import annotations

import os
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

from ..protocol.data import Benchmark, Question, Sample
from ..errors import MmadError
from .records import RecordWriter, unlock_records
from .runner import ErrorStreak, Runner, RunSummary, _ImageCache, _progress, in_shard

# Environment variables forwarded to workers when set in the driver (offline model loading).
FORWARDED_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME")


class _ModelInfo:
    """Stands in for the model in the driver when only the workers build it."""

    def __init__(self, name: str, config: dict):
        self.name = name
        self._config = config

    def generate(self, prompt):  # pragma: no cover - never asked in the driver
        raise RuntimeError("the driver does not ask questions")

    def config(self) -> dict:
        return self._config


class ImageWorker:
    """Holds one model and a Runner; asks all questions of the images it is given."""

    def __init__(self, bench: Benchmark, model: Any, factory: Callable[[], Any] | None, out: str, runner_kwargs: dict):
        if factory is not None:
            model = factory()
        elif isinstance(model, str):
            from ..models import create_model

            model = create_model(model)
        self.runner = Runner(bench, model, out, **runner_kwargs)

    def describe(self) -> tuple[str, dict]:
        ident = self.runner.identity()
        return ident["model"], ident["model_config"]

    def ask_image(self, key: str, indices: list[int]) -> tuple[list[dict], int]:
        sample = self.runner.bench.by_key[key]
        questions = [sample.questions[i] for i in indices]
        cache = _ImageCache(self.runner._image_context, {key: len(questions)})
        records = []
        for q in questions:
            records.append(self.runner._ask(cache, sample, q))
            cache.done(key)
        return records, cache.built

    def close(self) -> None:
        close = getattr(self.runner.model, "close", None)
        if callable(close):
            close()


class RayRunner:
    """Like `Runner`, with per-image work on Ray actors.

    address: Ray cluster address (`"auto"`, `"ray://head:10001"`); None starts a local Ray.
    actors: number of model replicas (default: cluster CPUs / num_cpus, or GPUs / num_gpus).
    num_cpus / num_gpus: resources each actor reserves (num_gpus=1 puts one model per GPU); default
    1 CPU, and 1 GPU for `hf:` models on a cluster with GPUs. The CLI sets these through the
    environment variables MMAD_RAY_ACTORS, MMAD_RAY_CPUS and MMAD_RAY_GPUS.
    model_factory: builds the model inside each actor (use for GPU models); then `model` may be None.
    The runner's `workers` becomes the number of images each actor works on at once (threads),
    which helps I/O-bound models such as HTTP endpoints.
    """

    def __init__(
        self,
        bench: Benchmark,
        model: Any,
        out: str | Path,
        *,
        address: str | None = None,
        actors: int | None = None,
        num_cpus: float | None = None,
        num_gpus: float | None = None,
        model_factory: Callable[[], Any] | None = None,
        worker_env: dict[str, str] | None = None,
        ray_init: dict | None = None,
        **runner_kwargs: Any,
    ):
        if model is None and model_factory is None:
            raise MmadError("RayRunner: give a model, a model SPEC string or model_factory")
        self.bench = bench
        self.model = model
        self.model_factory = model_factory
        self.out = Path(out)
        self.address = address
        # unset: the environment (MMAD_RAY_ACTORS / _CPUS / _GPUS, for the CLI), else defaults in _resources
        self.actors = actors if actors is not None else _env_number("MMAD_RAY_ACTORS")
        self.num_cpus = num_cpus if num_cpus is not None else _env_number("MMAD_RAY_CPUS")
        self.num_gpus = num_gpus if num_gpus is not None else _env_number("MMAD_RAY_GPUS")
        self.worker_env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ} | dict(worker_env or {})
        self.ray_init = dict(ray_init or {})
        self.threads = max(1, int(runner_kwargs.pop("workers", 1)))
        self.progress = runner_kwargs.pop("progress", True)
        self.max_consecutive_errors = runner_kwargs.get("max_consecutive_errors", 20)
        self.runner_kwargs = runner_kwargs
        self.images_prepared = 0
        self._lock = -1

    # -- ray set-up ------------------------------------------------------------
    def _start_ray(self):
        try:
            import ray
        except ModuleNotFoundError:
            raise MmadError("--backend ray needs Ray: pip install 'ray>=2.30'") from None
        started = False
        if not ray.is_initialized():
            kwargs = {"include_dashboard": False, "log_to_driver": False} | self.ray_init
            if self.address:
                kwargs["address"] = self.address
            try:
                ray.init(**kwargs)
            except ConnectionError as e:
                raise MmadError(f"--address {self.address}: cannot connect to Ray ({e}); start the cluster or fix the address") from None
            started = True
        return ray, started

    def _resources(self, ray) -> None:
        """Defaults: 1 CPU per actor; 1 GPU per actor for `hf:` models when the cluster has GPUs."""
        if self.num_cpus is None:
            self.num_cpus = 1
        if self.num_gpus is None:
            spec = self.runner_kwargs.get("model_spec") or (self.model if isinstance(self.model, str) else "")
            has_gpu = ray.cluster_resources().get("GPU", 0) > 0
            self.num_gpus = 1 if str(spec).startswith("hf:") and has_gpu else 0

    def _actor_count(self, ray, n_images: int) -> int:
        if self.actors:
            n = int(self.actors)
        else:
            res = ray.cluster_resources()
            n = int(res.get("GPU", 0) // self.num_gpus) if self.num_gpus else int(res.get("CPU", 1) // max(self.num_cpus, 1e-9))
        return max(1, min(n, max(1, n_images)))

    def _spawn(self, ray, n: int) -> list:
        model = self.model
        if self.model_factory is None and not isinstance(model, str):
            try:
                model = ray.put(model)
            except Exception as e:
                raise MmadError(
                    f"model {type(self.model).__name__} cannot be sent to Ray workers ({type(e).__name__}: {e}); "
                    "pass a model SPEC string or model_factory so each worker builds it"
                ) from None
        cls = ray.remote(ImageWorker).options(
            num_cpus=self.num_cpus,
            num_gpus=self.num_gpus,
            max_concurrency=self.threads,
            runtime_env={"env_vars": self.worker_env} if self.worker_env else None,
        )
        kwargs = dict(self.runner_kwargs, progress=False, workers=1)
        bench = ray.put(self.bench)  # sent once, shared by all actors
        return [cls.remote(bench, model, self.model_factory, str(self.out), kwargs) for _ in range(n)]

    # -- the loop ------------------------------------------------------------
    def run(self, items: list[tuple[Sample, Question]]) -> RunSummary:
        items = in_shard(items, self.runner_kwargs.get("shard"))
        groups: OrderedDict[str, list[int]] = OrderedDict()
        ray, started = self._start_ray()
        workers: list = []
        try:
            local = self.model if self.model is not None and not isinstance(self.model, str) and self.model_factory is None else None
            probe = Runner(self.bench, local or _ModelInfo("pending", {}), self.out, **self.runner_kwargs)
            probe.preflight(items)  # the model's own checks run only where the driver holds the model
            self._resources(ray)
            n_images = len({s.key for s, _ in items})
            if local is None:  # identity as the workers see their model
                workers = self._spawn(ray, self._actor_count(ray, n_images))
                name, cfg = _get(ray, workers[0].describe.remote())
                probe = Runner(self.bench, _ModelInfo(name, cfg), self.out, **self.runner_kwargs)
                probe.model_name = name
            path, self._lock, todo, _ = probe.open_run(items)  # held until run() ends
            for s, q in todo:
                groups.setdefault(s.key, []).append(q.index)
            if not workers and groups:  # identity checked first: a refused run starts no actors
                workers = self._spawn(ray, self._actor_count(ray, len(groups)))
            asked, errors, interrupted = self._gather(ray, workers, groups, path, len(todo))
        finally:
            try:  # let models release resources, but never hang on a dead actor
                ray.wait([w.close.remote() for w in workers], num_returns=len(workers), timeout=10)
            except Exception:
                pass
            for w in workers:
                try:
                    ray.kill(w)
                except Exception:
                    pass
            unlock_records(self._lock)
            self._lock = -1
            if started:
                ray.shutdown()
        summary = RunSummary(self.out, len(items), len(items) - len(todo), asked, errors, interrupted)
        if interrupted:
            print(f"\nInterrupted: rerun the same command to resume ({path}).", file=sys.stderr)
        return summary

    def _gather(self, ray, workers: list, groups: OrderedDict, path: Path, total: int) -> tuple[int, int, bool]:
        writer = RecordWriter(path, durable=self.runner_kwargs.get("durable", False))
        bar = _progress(total, self.progress)
        load = [0] * len(workers)
        pending: dict = {}
        queue = iter(groups.items())
        streak = ErrorStreak(self.max_consecutive_errors, path)
        asked = 0
        interrupted = False

        def submit() -> bool:
            nxt = next(queue, None)
            if nxt is None:
                return False
            i = min(range(len(workers)), key=load.__getitem__)  # least-busy actor
            load[i] += 1
            pending[workers[i].ask_image.remote(*nxt)] = i
            return True

        try:
            for _ in range(len(workers) * self.threads * 2):
                if not submit():
                    break
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    load[pending.pop(ref)] -= 1
                    records, built = _get(ray, ref)
                    self.images_prepared += built
                    for record in records:
                        writer.write(record)
                        asked += 1
                        streak.add(record)
                    bar.update(len(records))
                    submit()
        except KeyboardInterrupt:
            interrupted = True
        finally:
            for ref in pending:
                try:
                    ray.cancel(ref)
                except Exception:
                    pass
            bar.close()
            writer.close()
        return asked, streak.errors, interrupted


def _env_number(name: str) -> float | None:
    value = os.environ.get(name)
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        raise MmadError(f"environment variable {name}={value!r}: expected a number") from None


def _get(ray, ref):
    """ray.get, with a user error raised in a worker surfacing as that MmadError."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayError as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, MmadError):
            raise MmadError(str(cause)) from None
        text = str(e)
        if "MmadError" in text:  # actor start-up failures carry the error only as text
            line = next((ln for ln in reversed(text.splitlines()) if "MmadError" in ln), text)
            raise MmadError(line.split("MmadError:", 1)[-1].strip()) from None
        raise

"""Evaluation on a Ray cluster: per-image work fanned out to Ray actors, records gathered here.

Each image goes to one actor, which loads its images, runs the model's `prepare` once and asks
all of that image's questions (`Runner.ask_image`). `RayExecutor` is that fan-out; the loop that
claims the run folder, resumes and appends the records as they arrive is the local one (loop.py).

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
from pathlib import Path
from typing import Any, Callable

from ..protocol.data import Benchmark, Question, Sample
from ..errors import MmadError
from .loop import run_questions
from .runner import Runner, RunSummary, in_shard

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
        return self.runner.ask_image(sample, [sample.questions[i] for i in indices])

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

    # -- ray set-up ------------------------------------------------------------
    def _start_ray(self):
        try:
            import ray
        except ModuleNotFoundError:
            raise MmadError("--backend ray needs Ray: pip install 'mmad-boost[ray]' (or 'ray>=2.30')") from None
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
            num_cpus=self.num_cpus, num_gpus=self.num_gpus, max_concurrency=self.threads, runtime_env={"env_vars": self.worker_env} if self.worker_env else None
        )
        kwargs = dict(self.runner_kwargs, progress=False, workers=1)
        bench = ray.put(self.bench)  # sent once, shared by all actors
        return [cls.remote(bench, model, self.model_factory, str(self.out), kwargs) for _ in range(n)]

    # -- the run -------------------------------------------------------------
    def run(self, items: list[tuple[Sample, Question]]) -> RunSummary:
        items = in_shard(items, self.runner_kwargs.get("shard"))
        ray, started = self._start_ray()
        executor = RayExecutor(ray, lambda n_images: self._spawn(ray, self._actor_count(ray, n_images)), self.threads)
        try:
            local = self.model if self.model is not None and not isinstance(self.model, str) and self.model_factory is None else None
            probe = self._probe(local or _ModelInfo("pending", {}))
            probe.preflight(items)  # the model's own checks run only where the driver holds the model
            self._resources(ray)
            if local is None:  # identity as the workers see their model
                executor.add_actors(len({s.key for s, _ in items}))
                name, cfg = _get(ray, executor.actors[0].describe.remote())
                probe = self._probe(_ModelInfo(name, cfg))
                probe.model_name = name
            # identity checked before actors start (when the driver holds the model): a refused run starts none
            return run_questions(probe, items, executor)
        finally:
            self.images_prepared += executor.images_prepared
            executor.close()
            if started:
                ray.shutdown()

    def _probe(self, model) -> Runner:
        """A driver-side Runner: preflight, identity and the run folder, never asking."""
        return Runner(self.bench, model, self.out, progress=self.progress, **self.runner_kwargs)


class RayExecutor:
    """The run loop's executor on Ray: one unit is one image's questions, sent to the least-busy actor.

    spawn(n_images) starts the actors (sized to the work); `threads` images run at once per actor.
    """

    def __init__(self, ray, spawn: Callable[[int], list], threads: int = 1):
        self.ray, self.spawn, self.threads = ray, spawn, threads
        self.actors: list = []
        self.load: list[int] = []
        self.assigned: dict = {}  # object ref -> actor index
        self.images_prepared = 0

    def add_actors(self, n_images: int) -> None:
        self.actors = self.spawn(n_images)
        self.load = [0] * len(self.actors)

    @property
    def capacity(self) -> int:
        return len(self.actors) * self.threads * 2

    def units(self, todo) -> list[tuple[str, list[int]]]:
        groups: dict[str, list[int]] = {}
        for s, q in todo:
            groups.setdefault(s.key, []).append(q.index)
        return list(groups.items())

    def start(self, units) -> None:
        if not self.actors and units:
            self.add_actors(len(units))

    def submit(self, unit):
        i = min(range(len(self.actors)), key=self.load.__getitem__)  # least-busy actor
        self.load[i] += 1
        ref = self.actors[i].ask_image.remote(*unit)
        self.assigned[ref] = i
        return ref

    def wait(self, handles):
        ready, _ = self.ray.wait(handles, num_returns=1)
        return ready

    def result(self, ref, unit) -> list[dict]:
        self.load[self.assigned.pop(ref)] -= 1
        records, built = _get(self.ray, ref)
        self.images_prepared += built
        return records

    def cancel(self, handles) -> None:
        for ref in handles:
            try:
                self.ray.cancel(ref)
            except Exception:
                pass

    def close(self) -> None:
        """Let models release resources, but never hang on a dead actor."""
        actors, self.actors = self.actors, []
        if not actors:
            return
        try:
            self.ray.wait([a.close.remote() for a in actors], num_returns=len(actors), timeout=10)
        except Exception:
            pass
        for a in actors:
            try:
                self.ray.kill(a)
            except Exception:
                pass


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

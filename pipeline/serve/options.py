"""What a user sets to serve a model, and what the driver resolves before any replica starts.

The same settings come from ``python -m pipeline serve`` flags or from the ``args`` of a Ray Serve
config (a KubeRay RayService): see :func:`pipeline.serve.app.app_builder`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.config import ConfigError
from pipeline.serve.proxy_errors import CALLBACK, CALLBACK_ENV, MAX_BODY_ENV

DEFAULT_MODEL = "models:/anomalygpt@champion"
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class ServeSettings:
    """The user's choices (flags or RayService args); checked on construction."""

    model: str = DEFAULT_MODEL
    """Checkpoint folder, run folder's checkpoint, or a models:/ / runs:/ URI."""
    store: str = "runs/demo"
    """Run folder whose MLflow store resolves models:/ URIs when MLFLOW_TRACKING_URI is unset."""
    device: str = "auto"
    replicas: int = 1
    cpus_per_replica: float = 1.0
    max_batch_size: int = 4
    batch_wait_ms: float = 20.0
    max_upload_mb: float = 10.0
    max_queued_requests: int = 32
    """Requests each HTTP proxy holds waiting for a replica (a burst waits there before the replicas,
    which run 2 x max_batch_size each, take it); one more is answered 503 with ``Retry-After`` at
    once instead of queueing without bound. Keep it above replicas x 2 x max_batch_size."""
    retry_after_s: float = 2.0
    """The ``Retry-After`` of that 503, in seconds."""
    references_dir: str | None = None
    """Normal images per category (``DIR/<category>/train/good/`` or ``DIR/<category>/``): the
    few-shot bank of a request that names a category but uploads no references."""
    feedback_dir: str | None = None
    """Where ``POST /v1/feedback`` keeps confirmed normals and defects (pipeline.feedback); its
    normals join the category's bank at the next request. None: feedback is refused."""
    bank_budget: int | None = None
    """Patches per layer of each memory bank; None: the checkpoint's ``memory_bank.max_patches``."""
    token_file: str | None = None
    """A file holding the bearer token the API requires (its first line); None: $ANOMALYGPT_TOKEN,
    and without it the API is open to whoever reaches the port."""

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise ConfigError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        for name, low in (("replicas", 1), ("max_batch_size", 1), ("max_queued_requests", 1)):
            if getattr(self, name) < low:
                raise ConfigError(f"{name} must be at least {low}, got {getattr(self, name)}")
        for name in ("cpus_per_replica", "batch_wait_ms", "retry_after_s"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative, got {getattr(self, name)}")
        if self.bank_budget is not None and self.bank_budget < 1:
            raise ConfigError(f"bank_budget must be at least 1, got {self.bank_budget}")
        if self.max_upload_mb <= 0:
            raise ConfigError(f"max_upload_mb must be positive, got {self.max_upload_mb}")


@dataclass(frozen=True)
class ServeOptions:
    """What every replica receives: the settings plus the driver's resolution of them."""

    settings: ServeSettings
    checkpoint: str
    """The local checkpoint folder (on storage every replica's node can read)."""
    device: str
    """cpu or cuda: where each replica runs the model."""
    gpus_per_replica: float
    token_sha256: str | None = None
    """sha256 of the bearer token the API requires (None: open); the token itself stays with the driver."""
    cover_dir: str | None = None
    """The feedback folder the model was retrained with, read only, when the references are its
    recorded dataset and no ``feedback_dir`` is given: that dataset links the confirmed normals in,
    and they stay the bank's cover (``recorded_cover``)."""

    @property
    def reference_roots(self) -> list[str]:
        """The references, then the confirmed normals (cover): the served banks' folders."""
        cover = self.settings.feedback_dir or self.cover_dir
        return [root for root in (self.settings.references_dir, cover) if root]

    @property
    def max_upload_bytes(self) -> int:
        return int(self.settings.max_upload_mb * 1024 * 1024)


def resolve_options(settings: ServeSettings, check_gpus: bool = True) -> ServeOptions:
    """Resolve the model to a checked local checkpoint and the device to what the connected Ray
    cluster offers. Runs on the driver, so a bad model fails here, before Ray starts, and a missing
    GPU before any replica does. Joins Ray (``init_ray``: RAY_ADDRESS or a local one) unless it is
    already up. ``check_gpus=False`` lets ``cuda`` replicas wait for GPU nodes that are still
    joining (a RayService's cluster starting up)."""
    from pipeline.core.runtime import init_ray, require_gpus
    from pipeline.model_ref import resolve_checkpoint
    from train.model.checkpoint import verify_checkpoint

    if settings.references_dir is not None:
        references = Path(settings.references_dir).expanduser()
        if not references.is_dir():
            raise FileNotFoundError(f"references folder not found: {references}")
        # Absolute: replicas do not share the driver's working directory.
        settings = dataclasses.replace(settings, references_dir=os.fspath(references.resolve()))
    if settings.feedback_dir is not None:  # created here, so a read-only place fails at start
        feedback = Path(settings.feedback_dir).expanduser().resolve()
        feedback.mkdir(parents=True, exist_ok=True)
        settings = dataclasses.replace(settings, feedback_dir=os.fspath(feedback))
    token_sha256 = _token_sha256(settings.token_file)
    # Read by every HTTP proxy Ray Serve starts on a Ray this process starts (on a cluster, set it in
    # the nodes' environment): the proxy's own errors in the service's error shape.
    os.environ.setdefault(CALLBACK_ENV, CALLBACK)
    os.environ[MAX_BODY_ENV] = str(int(settings.max_upload_mb * 1024 * 1024))
    checkpoint = resolve_checkpoint(settings.model, settings.store)  # bad reference: exit 2; registry down: 3
    verify_checkpoint(checkpoint)
    cover_dir = _recorded_cover(settings, checkpoint)
    init_ray()
    device = settings.device
    if device == "auto":
        device = "cuda" if _cluster_gpus() > 0 else "cpu"
    if device == "cuda" and check_gpus:
        require_gpus(1, "serve --device cuda")
    return ServeOptions(
        settings=settings,
        checkpoint=os.fspath(Path(checkpoint).resolve()),
        device=device,
        gpus_per_replica=1.0 if device == "cuda" else 0.0,
        token_sha256=token_sha256,
        cover_dir=cover_dir,
    )


def _recorded_cover(settings: ServeSettings, checkpoint: Path) -> str | None:
    """The model's recorded feedback folder as cover, when the references are its recorded dataset
    and the service keeps no feedback folder of its own (which would be the cover instead)."""
    if settings.references_dir is None or settings.feedback_dir is not None:
        return None
    from pipeline.batch.provenance import recorded_cover, recorded_origin

    cover = recorded_cover(recorded_origin(settings.model, Path(checkpoint)), Path(settings.references_dir))
    return None if cover is None else os.fspath(cover)


TOKEN_ENV = "ANOMALYGPT_TOKEN"
MIN_TOKEN_CHARS = 16


def _token_sha256(token_file: str | None) -> str | None:
    """sha256 of the API token from ``token_file`` (first line) or $ANOMALYGPT_TOKEN; None: no token.
    A short token is refused: anyone who reaches the port could guess it."""
    if token_file is not None:
        path = Path(token_file).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"token file not found: {path}")
        lines = path.read_text(encoding="utf-8").splitlines()
        token, source = (lines[0].strip() if lines else ""), f"token file {path}"
    else:
        token, source = os.environ.get(TOKEN_ENV, "").strip(), f"${TOKEN_ENV}"
        if not token:
            return None
    if len(token) < MIN_TOKEN_CHARS:
        raise ConfigError(
            f"{source}: the token must be at least {MIN_TOKEN_CHARS} characters "
            "(make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    return hashlib.sha256(token.encode()).hexdigest()


def _cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0))

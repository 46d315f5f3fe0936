"""A sweep as data: which suite, which models, resolutions, batch sizes, dtypes, modes, device
and backends; its configurations are the cross product. The shape follows triton's
``perf_report``: a sweep is a spec, its result a DataFrame, its picture a plot.

Validation happens here, before anything runs, and raises ``UsageError`` (one line, exit 2):
a resolution the models cannot patchify, an unknown model, ``cuda`` without CUDA, an unknown
or unusable backend. Backends are resolved here too (``auto`` -> the concrete kernel), so
each row names what actually ran and a rerun's skip check compares like with like.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields

from dimbench.errors import UsageError
from dimbench.threads import check_omp_policy

DTYPES = ("fp32", "bf16", "fp16")
MODES = ("forward", "train")
DEVICES = ("cpu", "cuda")
PATCH_MULTIPLE = 16  # VAE /8 x patch 2: an R-px image must give a whole patch grid
SAMPLE_STEPS = 50  # DPM-Solver++ steps of a DiM/DiT sampling run

# Default model sets. CPU: the small configs (a 1536-px forward of a paper-sized model takes
# minutes on two cores); GPU: the paper-sized models the DiM paper compares.
CPU_MODELS = ("DiM-S/2", "DiT-S/2", "U-ViT-S/2")
GPU_MODELS = ("DiM-H/2", "DiT-XL/2", "U-ViT-H/2")
PAPER_MODELS = ("DiM-L/2", "DiM-H/2", "DiT-XL/2", "U-ViT-H/2")
DEFAULT_RESOLUTIONS = (256, 512, 1024, 1536)
NO_BACKEND = "-"  # in the scan column of a model without a scan, and vice versa


@dataclass(frozen=True)
class Suite:
    """One kind of measurement and how it is drawn."""

    name: str
    help: str
    measure: Callable[[Config], dict]  # runs one configuration (in its own process if isolated)
    isolated: bool = True  # one process per configuration (False: instant, allocates nothing)
    default_models: Callable[[str], tuple[str, ...]] = lambda device: (
        GPU_MODELS if device.startswith("cuda") else CPU_MODELS
    )
    metric: str = "imgs_per_s"  # the column its plot shows
    ylabel: str = ""
    higher_is_better: bool = True


@dataclass(frozen=True)
class Config:
    """One measurement: everything the measuring process needs, JSON-serialisable."""

    suite: str
    model: str
    image_size: int
    batch_size: int = 1
    device: str = "cpu"
    dtype: str = "fp32"
    mode: str = "forward"
    scan_backend: str = NO_BACKEND
    attn_backend: str = NO_BACKEND
    warmup: int = 1
    repeats: int = 3
    budget_s: float | None = None
    timeout_s: float = 300.0
    sample_steps: int = SAMPLE_STEPS
    threads: int | None = None
    omp_wait_policy: str | None = None  # OMP_WAIT_POLICY for the measuring process

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Config:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def key_fields(self) -> dict:
        return {
            "suite": self.suite,
            "model": self.model,
            "image_size": self.image_size,
            "batch_size": self.batch_size,
            "device": self.device,
            "dtype": self.dtype,
            "mode": self.mode,
            "scan_backend": self.scan_backend,
            "attn_backend": self.attn_backend,
        }

    def label(self) -> str:
        return f"{self.model} @ {self.image_size}px  b{self.batch_size} {self.dtype} {self.mode}"


@dataclass(frozen=True)
class ModelInfo:
    family: str
    patch_size: int
    params_m: float

    def tokens(self, image_size: int, downsample: int = 8) -> int:
        return (image_size // downsample // self.patch_size) ** 2


@functools.cache
def model_info(name: str) -> ModelInfo:
    """Family, patch size and size of a registered model, from a meta-device build (free)."""
    from dimbench.registry import create_model

    model = create_model(name, image_size=256, device="meta")
    params = sum(p.numel() for p in model.parameters())
    return ModelInfo(
        family=str(getattr(model, "family", "")),
        patch_size=int(getattr(model, "patch_size", 2)),
        params_m=params / 1e6,
    )


@dataclass
class Sweep:
    """The cross product models x resolutions x batch sizes x dtypes x modes on one device."""

    suite: Suite
    models: list[str]
    resolutions: list[int] = field(default_factory=lambda: list(DEFAULT_RESOLUTIONS))
    batch_sizes: list[int] = field(default_factory=lambda: [1])
    dtypes: list[str] = field(default_factory=lambda: ["fp32"])
    modes: list[str] = field(default_factory=lambda: ["forward"])
    device: str = "cpu"
    scan_backend: str = "auto"
    attn_backend: str = "auto"
    warmup: int = 1
    repeats: int = 3
    budget_s: float | None = None
    timeout_s: float = 300.0
    sample_steps: int = SAMPLE_STEPS
    threads: int | None = None
    omp_wait_policy: str | None = None

    def configs(self) -> list[Config]:
        """Every configuration, smallest resolution first within each model, backends resolved.
        Call ``validate()`` first."""
        out = []
        for model in self.models:
            family = model_info(model).family if self.suite.isolated else ""
            for dtype in self.dtypes:
                scan, attn = NO_BACKEND, NO_BACKEND
                if self.suite.isolated:
                    if family == "dim":
                        scan = resolve_scan_backend(self.scan_backend, self.device)
                    else:
                        attn = resolve_attn_backend(self.attn_backend, self.device, dtype)
                for mode in self.modes:
                    for batch in self.batch_sizes:
                        for res in self.resolutions:
                            out.append(
                                Config(
                                    suite=self.suite.name,
                                    model=model,
                                    image_size=res,
                                    batch_size=batch,
                                    device=self.device if self.suite.isolated else "meta",
                                    dtype=dtype if self.suite.isolated else "fp32",
                                    mode=mode,
                                    scan_backend=scan,
                                    attn_backend=attn,
                                    warmup=self.warmup,
                                    repeats=self.repeats,
                                    budget_s=self.budget_s,
                                    timeout_s=self.timeout_s,
                                    sample_steps=self.sample_steps,
                                    threads=self.threads,
                                    omp_wait_policy=self.omp_wait_policy,
                                )
                            )
        # FLOPs do not depend on dtype: one row per (model, res, batch, mode)
        return list(dict.fromkeys(out))

    def validate(self) -> None:
        """Refuse bad input with a one-line UsageError before anything runs."""
        from dimbench.registry import list_models

        valid = list_models()
        unknown = [m for m in self.models if m not in valid]
        if unknown:
            raise UsageError(
                f"unknown model{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                f"valid: {', '.join(valid) or '(none registered)'}"
            )
        if not self.models:
            raise UsageError("no models to run")
        if not self.resolutions:
            raise UsageError("no resolutions to run")
        for res in self.resolutions:
            if res <= 0 or res % PATCH_MULTIPLE:
                raise UsageError(
                    f"resolution {res} is not a positive multiple of {PATCH_MULTIPLE} "
                    "(8x VAE downsampling x patch 2)"
                )
        for model in self.models:
            step = 8 * model_info(model).patch_size
            bad = [r for r in self.resolutions if r % step]
            if bad:
                raise UsageError(f"{model} needs resolutions divisible by {step}; got {bad[0]}")
        for b in self.batch_sizes:
            if b < 1:
                raise UsageError(f"batch size must be >= 1, got {b}")
        for name, values, allowed in (
            ("dtype", self.dtypes, DTYPES),
            ("mode", self.modes, MODES),
        ):
            for v in values:
                if v not in allowed:
                    raise UsageError(f"unknown {name} {v!r}; valid: {', '.join(allowed)}")
        if self.warmup < 0 or self.repeats < 1:
            raise UsageError("--warmup must be >= 0 and --repeats >= 1")
        if self.timeout_s <= 0:
            raise UsageError("--timeout must be positive")
        if self.omp_wait_policy is not None:
            check_omp_policy(self.omp_wait_policy)
        if self.threads is not None and self.threads < 1:
            raise UsageError("--threads must be >= 1")
        check_device(self.device)
        if self.suite.isolated:
            families = {model_info(m).family for m in self.models}
            # A backend named explicitly must exist even if no model in the sweep uses it.
            if "dim" in families or self.scan_backend != "auto":
                resolve_scan_backend(self.scan_backend, self.device)
            if families - {"dim"} or self.attn_backend != "auto":
                for dtype in self.dtypes:
                    resolve_attn_backend(self.attn_backend, self.device, dtype)


def check_device(device: str) -> None:
    import torch

    kind, _, index = device.partition(":")
    if kind not in DEVICES:
        raise UsageError(f"unknown device {device!r}; valid: cpu, cuda, cuda:N")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise UsageError("--device cuda given but CUDA is not available on this machine")
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise UsageError(
                f"no CUDA device {device!r}; this machine has {torch.cuda.device_count()}"
            )


def resolve_scan_backend(name: str, device: str) -> str:
    """``auto`` -> the fastest scan usable on ``device``; a named one must be usable there."""
    import torch

    from dimbench.ops.scan import resolve_backend

    try:
        return resolve_backend(name, torch.device(device))
    except (ValueError, RuntimeError) as e:
        raise UsageError(str(e)) from None


def resolve_attn_backend(name: str, device: str, dtype: str) -> str:
    """The attention backend ``dimbench.ops.attention`` will pick for ``device``/``dtype``
    (the same rule as ``resolve_attention_backend``, without needing a tensor)."""
    from dimbench.ops.attention import _IMPLS, attention_backends

    usable = attention_backends(device)
    half = dtype in ("bf16", "fp16")
    if name == "auto":
        flash = device.startswith("cuda") and half and "flash_attn" in usable
        return "flash_attn" if flash else "sdpa"
    if name not in _IMPLS:
        raise UsageError(f"unknown attention backend {name!r}; available here: {', '.join(usable)}")
    if name not in usable:
        raise UsageError(
            f"attention backend {name!r} is unavailable on {device}; "
            f"available here: {', '.join(usable)}"
        )
    if name == "flash_attn" and not half:
        raise UsageError("attention backend 'flash_attn' needs --dtype bf16 or fp16")
    return name

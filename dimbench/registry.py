"""The model registry, as timm's ``register_model``: a model declares what it is once and every
command, suite, trainer and plot reads it from here.

    from dimbench import register_model

    @register_model("MyNet-T/2", kernels=("attention",), width="hidden_size")
    def mynet_t2(input_size=(32, 32), in_channels=4, num_classes=1000, attn_backend="auto", **kw):
        return MyNet(input_size, in_channels, num_classes, attn_backend=attn_backend, **kw)

The constructor is called with ``input_size``, the (H, W) of the tensors the model will see (an
R-px image's latents are R/8 on a side; pixel-space training passes the pixels), the backend of
each kernel it declares (``scan_backend``, ``attn_backend``, ``conv_backend``) and the caller's
overrides (``in_channels``, ``num_classes``, ...). The module it returns has ``forward(x, t, y)``
and the attributes ``in_channels``, ``out_channels``, ``num_classes`` and ``learn_sigma``.

Models outside the package register the same way from a module named by ``--import MODULE``
(any command), by ``DIMBENCH_IMPORT=mod1,mod2`` (which worker processes inherit), or by an
installed package's entry point in the group ``dimbench.models``. A module written against
``mamba_ssm`` imports on a machine without it under ``DIMBENCH_MAMBA_COMPAT=1`` (dimbench.compat).
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import re
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from dimbench.errors import UsageError
from dimbench.latents import LATENT_DOWNSAMPLE
from dimbench.plugins import IMPORT_ENV, extend_path, named_modules

# The models that come with dimbench, registered when their modules are imported.
BUILTIN_MODULES = (
    "dimbench.models.dim",
    "dimbench.models.dit",
    "dimbench.models.uvit",
    "dimbench.models.vim",
)
ENTRY_POINT_GROUP = "dimbench.models"

# kernel -> the constructor keyword (and result column) of its backend
KERNELS = {"scan": "scan_backend", "attention": "attn_backend", "conv": "conv_backend"}
PARAMETERISATIONS = ("eps", "eps+sigma")  # epsilon, or epsilon plus a learned variance


class UnknownModelError(UsageError):
    pass


@dataclass(frozen=True)
class ModelSpec:
    """What a registered model is: everything the rest of dimbench needs without building it."""

    name: str
    constructor: Callable[..., nn.Module]
    kernels: tuple[str, ...] = ()  # which of KERNELS it runs: only those backends are passed
    patch_size: int = 2  # the image must give a whole grid of patches
    width: str | None = None  # constructor keyword of its width (train-compare --match)
    width_multiple: int = 1  # the widths it accepts are multiples of this
    heads: str | None = None  # constructor keyword of its attention heads (follow the width)
    # constructor keyword of its block count, where peak memory grows linearly in it (the memory
    # check records two shallow builds of the same parity and extrapolates)
    depth: str | None = None
    parameterisation: str = "eps"
    schedule: str = "scaled_linear"  # the noise schedule its paper trains with
    family: str = ""  # the label its plots use (default: the name before "-<size>/<patch>")
    baseline: bool = False  # an attention baseline the other models are compared against

    @property
    def family_id(self) -> str:
        """The family as results and checkpoints record it: "dim", "dit", "uvit", ..."""
        return re.sub(r"[^a-z0-9]+", "", self.family.lower())

    @property
    def learn_sigma(self) -> bool:
        return self.parameterisation == "eps+sigma"

    def input_size(
        self, image_size: int | tuple[int, int], downsample: int = LATENT_DOWNSAMPLE
    ) -> tuple[int, int]:
        """The (H, W) the model sees for an image of ``image_size`` px (UsageError if it cannot
        be cut into whole patches): the one place that checks an image size."""
        h, w = image_hw(image_size)
        step = downsample * self.patch_size
        if h <= 0 or w <= 0 or h % step or w % step:
            size = f"{h}" if h == w else f"{h}x{w}"
            raise UsageError(
                f"resolution {size} is not a positive multiple of {step}: {self.name} needs "
                f"resolutions divisible by {step} ({downsample}x downsampling x patch "
                f"{self.patch_size})"
            )
        return h // downsample, w // downsample

    def tokens(self, image_size: int | tuple[int, int], downsample: int = LATENT_DOWNSAMPLE) -> int:
        """Image patch tokens: (H / patch) x (W / patch) of ``input_size``."""
        h, w = self.input_size(image_size, downsample)
        return (h // self.patch_size) * (w // self.patch_size)


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(
    name: str,
    *,
    kernels: tuple[str, ...] = (),
    patch_size: int = 2,
    width: str | None = None,
    width_multiple: int = 1,
    heads: str | None = None,
    depth: str | None = None,
    parameterisation: str = "eps",
    schedule: str = "scaled_linear",
    family: str | None = None,
    baseline: bool = False,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register ``constructor`` under ``name`` with what it declares (see ModelSpec)."""
    unknown = [k for k in kernels if k not in KERNELS]
    if unknown:
        raise ValueError(f"{name}: unknown kernels {unknown}; valid: {', '.join(KERNELS)}")
    if parameterisation not in PARAMETERISATIONS:
        raise ValueError(f"{name}: parameterisation must be one of {PARAMETERISATIONS}")

    def register(constructor: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[name] = ModelSpec(
            name=name,
            constructor=constructor,
            kernels=tuple(kernels),
            patch_size=patch_size,
            width=width,
            width_multiple=width_multiple,
            heads=heads,
            depth=depth,
            parameterisation=parameterisation,
            schedule=schedule,
            family=family or re.sub(r"-[^-/]+/\d+.*$", "", name),
            baseline=baseline,
        )
        return constructor

    return register


# ---- finding models -------------------------------------------------------------------------


def _import(module: str, how: str) -> None:
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name != module.split(".")[0]:
            raise UsageError(f"cannot import {module} ({how}): {type(e).__name__}: {e}") from None
        raise UsageError(
            f"cannot import {module} ({how}): no module {e.name!r} on the Python path or in the "
            "current directory; give its file (--import path/to/module.py) or add its folder "
            "to PYTHONPATH"
        ) from None
    except Exception as e:  # noqa: BLE001 - a broken plug-in is the user's to fix
        raise UsageError(f"cannot import {module} ({how}): {type(e).__name__}: {e}") from None


def import_plugins() -> None:
    """Import the modules named by ``--import`` / ``$DIMBENCH_IMPORT`` and the packages that
    declare a ``dimbench.models`` entry point: they register models (and suites). With
    ``$DIMBENCH_MAMBA_COMPAT=1`` the mamba_ssm layer is installed first, so modules written
    against mamba_ssm import on any machine (workers inherit the variable)."""
    from dimbench.compat import install_from_env

    install_from_env()
    extend_path()
    for module in named_modules():
        _import(module, f"named by --import / ${IMPORT_ENV}")
    _load_entry_points()


def _load() -> dict[str, ModelSpec]:
    """The registry after importing every module that registers models."""
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
    import_plugins()
    return _REGISTRY


@functools.cache
def _load_entry_points() -> None:
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            loaded = ep.load()
        except Exception as e:  # noqa: BLE001
            raise UsageError(
                f"cannot load the {ENTRY_POINT_GROUP} entry point {ep.name} ({ep.value}): "
                f"{type(e).__name__}: {e}"
            ) from None
        if callable(loaded) and not isinstance(loaded, type):
            loaded()


def list_models() -> list[str]:
    """All registered model names."""
    return sorted(_load())


def get_model(name: str) -> ModelSpec:
    """The spec of a registered model; an unknown name is an error listing the valid ones."""
    registry = _load()
    if name not in registry:
        raise UnknownModelError(
            f"unknown model {name!r}; valid names: {', '.join(sorted(registry))}"
        )
    return registry[name]


def image_hw(image_size: int | tuple[int, int]) -> tuple[int, int]:
    """(height, width) in pixels from an int or a pair."""
    if isinstance(image_size, int):
        return image_size, image_size
    h, w = image_size
    return int(h), int(w)


def create_model(
    name: str,
    image_size: int | tuple[int, int] = 256,
    device: str | torch.device | None = None,
    scan_backend: str = "auto",
    attn_backend: str = "auto",
    conv_backend: str = "auto",
    downsample: int = LATENT_DOWNSAMPLE,
    **overrides,
) -> nn.Module:
    """Build a registered model for ``image_size`` pixels.

    ``device="meta"`` builds it without allocating memory (for FLOP counting).
    ``downsample=1, in_channels=3`` builds a pixel-space model. Only the backends of the kernels
    the model declares reach its constructor.
    """
    from dimbench.ops.backends import resolve

    spec = get_model(name)
    backends = {"scan": scan_backend, "attention": attn_backend, "conv": conv_backend}
    for kernel in spec.kernels:  # names only: the ops resolve them for their tensors at each call
        resolve(kernel, backends[kernel], "meta")
    kwargs = {KERNELS[k]: backends[k] for k in spec.kernels}
    input_size = spec.input_size(image_size, downsample)
    with torch.device(device) if device is not None else nullcontext():
        model = spec.constructor(input_size=input_size, **kwargs, **overrides)
    model.model_name = name
    model.family = spec.family_id
    model.image_size = image_hw(image_size)
    return model

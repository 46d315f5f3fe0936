"""DiM's token layout: the padded patch grid, the four scan orders and the switches between them.

The sequence a DiM block sees is ``[prefix tokens, padded grid in the block's scan order]``.
The prefix (time token, class token, split tokens) never moves. The padded grid is the
``H x W`` patch grid with ``pad_len`` pad columns at the end of every row and ``pad_len`` pad
rows at the bottom, i.e. ``(H + pad_len) x (W + pad_len)`` tokens.

Which pad vector fills which pad slot (``pad_vector_index``): ``lateral`` (the official
``pad_token_schedules=['dec_split', 'lateral']`` of the 256-px configs) puts vector j in pad column
j of every row and vector k in the whole pad row k; ``cyclic`` (``'rho_pad'``, the released 512-px
fine-tune) fills the pad slots in row-major order with vectors 0, 1, ..., pad_len - 1, 0, 1, ...
The two agree on the pad columns of the patch rows and differ on the bottom pad rows.

Scan orders over the padded grid (the official code's pattern ids in brackets):
    R+ row-major (0), R- reversed row-major (-2), C+ column-major (1), C- reversed column-major (-1)
A block in order ``o`` sees grid token ``perm_o[k]`` (a row-major position) at sequence slot
``k``. Between blocks a "scan switch" re-orders the sequence from one order to the next.
"""

from __future__ import annotations

import functools
from enum import IntEnum

import torch

Tensor = torch.Tensor

PAD_LAYOUTS = ("lateral", "cyclic")


class ScanOrder(IntEnum):
    """The four scan orders, in the order the official code cycles through them."""

    ROW = 0  # R+
    ROW_REV = 1  # R-
    COL = 2  # C+
    COL_REV = 3  # C-

    @property
    def label(self) -> str:
        return ("R+", "R-", "C+", "C-")[self.value]


def scan_permutation(order: int, height: int, width: int) -> Tensor:
    """Row-major positions of an ``height x width`` grid in the sequence order ``order``."""
    row_major = torch.arange(height * width)
    order = ScanOrder(order)
    if order in (ScanOrder.ROW, ScanOrder.ROW_REV):
        perm = row_major
    else:
        perm = row_major.view(height, width).t().reshape(-1)
    if order in (ScanOrder.ROW_REV, ScanOrder.COL_REV):
        perm = perm.flip(0)
    return perm


def scan_schedule(depth: int, num_orders: int = 4, encoder_start: int = 1) -> list[int]:
    """The scan order of every block, as the official DiM code assigns them.

    Blocks before ``encoder_start`` and the last block scan R+. The encoder half steps forward
    through the first ``num_orders`` orders (R+, R-, C+, C-), the decoder half steps back, so
    the decoder mirrors the encoder around the middle: block ``mid - 1 + k`` and block
    ``mid - 1 - k`` share an order. A long skip from block ``mid - 1 - k`` therefore arrives in
    the same order as the hidden state leaving block ``mid - 1 + k``, and one switch moves both.
    With depth 49 and 4 orders: block 0 R+; blocks 1-24 R-, C+, C-, R+, ...; block 25 C-,
    block 26 C+, ...; block 48 R+.
    """
    if num_orders not in (1, 2, 3, 4):
        raise ValueError(f"num_orders must be 1 to 4, got {num_orders}")
    mid = encoder_start + (depth - encoder_start) // 2
    schedule = []
    idx = 0
    for block in range(depth):
        if block < encoder_start or block == depth - 1:
            idx = 0
        elif block < mid:
            idx = (idx + 1) % num_orders
        elif block == mid and (depth - encoder_start) % 2 == 1:
            idx = idx % num_orders
        else:
            idx = (idx - 1) % num_orders
        schedule.append(idx)
    return schedule


def pad_vector_index(
    grid_h: int, grid_w: int, pad_len: int, layout: str = "lateral", device=None
) -> Tensor:
    """(grid_h + pad_len, grid_w + pad_len) long: each pad slot's pad vector, -1 on patches."""
    if layout not in PAD_LAYOUTS:
        raise ValueError(f"pad_layout must be one of {', '.join(PAD_LAYOUTS)}, got {layout!r}")
    rows = torch.arange(grid_h + pad_len, device=device)[:, None]
    cols = torch.arange(grid_w + pad_len, device=device)[None, :]
    pad_rows = (rows - grid_h).expand(-1, cols.shape[1])
    if layout == "lateral":
        index = torch.where(rows >= grid_h, pad_rows, cols - grid_w)
    else:  # slot number in row-major order over the pad slots, modulo pad_len
        slot_in_patch_rows = rows * pad_len + cols - grid_w
        slot_in_pad_rows = grid_h * pad_len + pad_rows * (grid_w + pad_len) + cols
        index = torch.where(rows >= grid_h, slot_in_pad_rows, slot_in_patch_rows) % max(pad_len, 1)
    return torch.where((rows < grid_h) & (cols < grid_w), -1, index)


class TokenLayout:
    """Index tensors for one grid size on one device (build with :func:`token_layout`)."""

    def __init__(
        self, grid_h: int, grid_w: int, pad_len: int, num_prefix: int, device: torch.device
    ) -> None:
        self.grid_h, self.grid_w = grid_h, grid_w
        self.pad_len = pad_len
        self.num_prefix = num_prefix
        self.device = device
        self.padded_h, self.padded_w = grid_h + pad_len, grid_w + pad_len
        self.num_grid_tokens = self.padded_h * self.padded_w
        self.seq_len = num_prefix + self.num_grid_tokens
        self.perms = [scan_permutation(o, self.padded_h, self.padded_w) for o in ScanOrder]
        self._switch: dict[tuple[int, int], Tensor] = {}

    def switch_index(self, src: int, dst: int) -> Tensor | None:
        """Sequence index that turns an ``src``-ordered sequence into a ``dst``-ordered one.

        ``seq_dst = seq_src.index_select(1, index)``; the prefix maps to itself. ``None`` when
        the orders are equal (nothing to do).
        """
        if src == dst:
            return None
        key = (src, dst)
        if key not in self._switch:
            inverse_src = torch.argsort(self.perms[src])
            grid = inverse_src[self.perms[dst]] + self.num_prefix
            index = torch.cat([torch.arange(self.num_prefix), grid])
            self._switch[key] = index.to(self.device)
        return self._switch[key]

    def pad_mask(self) -> Tensor:
        """(padded_h, padded_w) bool, True where a pad token sits."""
        mask = torch.zeros(self.padded_h, self.padded_w, dtype=torch.bool)
        mask[self.grid_h :, :] = True
        mask[:, self.grid_w :] = True
        return mask


@functools.lru_cache(maxsize=64)
def _cached_layout(
    grid_h: int, grid_w: int, pad_len: int, num_prefix: int, device: str
) -> TokenLayout:
    return TokenLayout(grid_h, grid_w, pad_len, num_prefix, torch.device(device))


def token_layout(
    grid_h: int, grid_w: int, pad_len: int, num_prefix: int, device: torch.device | str
) -> TokenLayout:
    """The (cached) layout of an ``grid_h x grid_w`` patch grid with ``pad_len`` pads."""
    if torch.compiler.is_compiling():  # traced once per graph: its indices become constants
        return TokenLayout(grid_h, grid_w, pad_len, num_prefix, torch.device(device))
    return _cached_layout(grid_h, grid_w, pad_len, num_prefix, str(torch.device(device)))

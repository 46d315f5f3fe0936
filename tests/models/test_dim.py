"""DiM: architecture facts, token layout, scan switches, resolution changes, checkpoints."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dimbench.models.dim import DiM, resize_pos_embed
from dimbench.models.dim_layout import ScanOrder, scan_permutation, scan_schedule, token_layout
from dimbench.ops import scan_backends
from dimbench.registry import create_model


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny shapes gain nothing from a second thread; on a busy machine its barriers cost 10x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(image_size=64, **overrides) -> DiM:
    torch.manual_seed(0)
    return create_model("DiM-T/2", image_size, scan_backend="ref", **overrides)


def inputs(batch: int, h: int, w: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, h, w, generator=g)
    t = torch.rand(batch, generator=g) * 1000
    y = torch.randint(0, 1001, (batch,), generator=g)
    return x, t, y


class ZeroMixer(nn.Module):
    """A mixer whose branch is zero: every block then passes the residual stream through."""

    def forward(self, h):
        return torch.zeros_like(h)


# ----------------------------------------------------------------------------- paper facts


def test_registry_and_attributes():
    m = create_model("DiM-T/2", 64, device="meta")
    assert (m.family, m.in_channels, m.out_channels, m.patch_size) == ("dim", 4, 4, 2)
    assert (m.num_classes, m.learn_sigma) == (1000, False)
    assert m.model_name == "DiM-T/2" and m.image_size == (64, 64)
    assert all(not p.is_meta for p in tiny().parameters())


def test_dim_h_parameter_count_on_meta():
    m = create_model("DiM-H/2", 256, device="meta")
    assert all(p.is_meta for p in m.parameters())
    n = sum(p.numel() for p in m.parameters())
    assert abs(n - 860e6) / 860e6 < 0.01, n
    n_l = sum(p.numel() for p in create_model("DiM-L/2", 256, device="meta").parameters())
    assert abs(n_l - 386e6) / 386e6 < 0.01, n_l


@pytest.mark.parametrize("res,tokens", [(256, 366), (512, 1230), (1024, 4494), (1536, 9806)])
def test_sequence_lengths(res, tokens):
    m = create_model("DiM-H/2", res, device="meta")
    assert m.seq_len() == tokens
    x, t, y = (v.to("meta") for v in inputs(1, res // 8, res // 8))
    seq, cond, layout = m.embed(x, t, y)
    assert seq.shape == (1, tokens, 1536) and layout.seq_len == tokens
    assert cond.shape == (1, 2, 1536)


def test_output_shape_on_meta_at_1536():
    m = create_model("DiM-H/2", 1536, device="meta")
    x, t, y = (v.to("meta") for v in inputs(2, 192, 192))
    out = m(x, t, y)
    assert out.shape == (2, 4, 192, 192) and out.is_meta


# ----------------------------------------------------------------------------- scan orders


@pytest.mark.parametrize("h,w", [(4, 4), (7, 7), (5, 9)])
def test_scan_orders_are_permutations(h, w):
    grid = torch.arange(h * w).view(h, w)
    perms = {o: scan_permutation(o, h, w) for o in ScanOrder}
    for perm in perms.values():
        assert torch.equal(perm.sort().values, torch.arange(h * w))
    assert torch.equal(perms[ScanOrder.ROW], grid.reshape(-1))
    assert torch.equal(perms[ScanOrder.ROW_REV], grid.reshape(-1).flip(0))
    assert torch.equal(perms[ScanOrder.COL], grid.t().reshape(-1))
    assert torch.equal(perms[ScanOrder.COL_REV], grid.t().reshape(-1).flip(0))


def test_switch_indices_map_between_orders():
    layout = token_layout(3, 5, 3, 5, "cpu")
    tokens = torch.arange(layout.num_grid_tokens)  # token value = its row-major position
    for src in ScanOrder:
        seq_src = torch.cat([-torch.arange(1, 6), tokens[layout.perms[src]]])
        for dst in ScanOrder:
            index = layout.switch_index(src, dst)
            seq_dst = seq_src if index is None else seq_src[index]
            assert torch.equal(seq_dst[:5], seq_src[:5])  # prefix stays in front
            assert torch.equal(seq_dst[5:], tokens[layout.perms[dst]])


def test_block_schedule_matches_official_49():
    s = scan_schedule(49, 4)
    assert len(s) == 49 and s[0] == 0 and s[-1] == 0
    assert s[1:25] == [1, 2, 3, 0] * 6  # R-, C+, C-, R+ cycling
    for k in range(1, 24):  # decoder mirrors the encoder around block 24
        assert s[24 + k] == s[24 - k]
    assert s[25] == 3 and s[26] == 2  # C-, C+
    assert scan_schedule(49, 1) == [0] * 49
    assert set(scan_schedule(49, 2)) == {0, 1}


@pytest.mark.parametrize("long_skips", [False, True])
def test_switches_compose_with_identity_blocks(long_skips):
    """Blocks that add nothing: each sees the tokens in its scan order; the output is the input."""
    m = tiny(64, long_skips=long_skips)
    for block in m.blocks:
        block.mixer = ZeroMixer()
        if block.skip_fusion is not None:  # fuse(h, skip) = h
            with torch.no_grad():
                w = torch.zeros_like(block.skip_fusion.linear.weight)
                w[:, : m.hidden_size] = torch.eye(m.hidden_size)
                block.skip_fusion.linear.weight.copy_(w)
    x, t, y = inputs(2, 8, 8)
    seq, cond, layout = m.embed(x, t, y)
    seen = []
    hooks = [b.register_forward_pre_hook(lambda mod, args: seen.append(args[0])) for b in m.blocks]
    with torch.no_grad():
        out = m.run_blocks(seq, m.adaln_single(t, y), layout)
    for h in hooks:
        h.remove()
    torch.testing.assert_close(out, seq)
    assert len(seen) == m.depth
    for order, stream in zip(m.schedule, seen, strict=True):
        expected = seq[:, layout.num_prefix :][:, layout.perms[order]]
        torch.testing.assert_close(stream[:, : layout.num_prefix], seq[:, : layout.num_prefix])
        torch.testing.assert_close(stream[:, layout.num_prefix :], expected)


def official_style_blocks(m: DiM, seq, modulation, layout):
    """The block loop restated the way the official code runs it: relative flips and
    (h w) <-> (w h) rearranges between pattern ids, residual added before each switch."""
    ids = [0, -2, 1, -1]  # the official pattern ids of R+, R-, C+, C-
    n, hp, wp = layout.num_prefix, layout.padded_h, layout.padded_w

    def change(seq, last, cur):
        g = seq[:, n:]
        if last < 0 and cur >= 0:
            g = g.flip(1)
        if (last + cur) % 2 == 1:
            if cur % 2 == 1:  # to column-major
                g = g.unflatten(1, (hp, wp)).transpose(1, 2).flatten(1, 2)
            else:  # to row-major
                g = g.unflatten(1, (wp, hp)).transpose(1, 2).flatten(1, 2)
        if cur < 0 and last >= 0:
            g = g.flip(1)
        return torch.cat([seq[:, :n], g], dim=1)

    hidden, residual, last, skips = seq, None, 0, []
    for i, block in enumerate(m.blocks):
        if block.skip_fusion is not None:
            hidden = block.skip_fusion(hidden + residual, skips.pop())
            residual = None
        if residual is not None:
            hidden = hidden + residual
        cur = ids[m.schedule[i]]
        hidden = change(hidden, last, cur)
        last, residual = cur, hidden
        hidden = block(residual, modulation)
        if m.push_skip[i]:
            skips.append(hidden + residual)
    return change(hidden + residual, last, 0)


@pytest.mark.parametrize(
    "overrides", [{}, {"scan_directions": 2}, {"hidden_size": 520, "depth": 5}]
)  # the last fuses skips as Linear(h) + Linear(skip) (width > 512)
def test_block_loop_matches_the_official_formulation(overrides):
    m = tiny(64, **overrides)
    x, t, y = inputs(2, 8, 12)  # non-square: 4x6 patches, 7x9 padded
    with torch.no_grad():
        seq, _, layout = m.embed(x, t, y)
        modulation = m.adaln_single(t, y)
        ours = m.run_blocks(seq, modulation, layout)
        theirs = official_style_blocks(m, seq, modulation, layout)
    torch.testing.assert_close(ours, theirs)


def test_pad_and_split_tokens_sit_where_the_paper_puts_them_and_learn():
    m = tiny(64)
    x, t, y = inputs(2, 8, 8)  # 4x4 patch grid, padded to 7x7
    seq, _, layout = m.embed(x, t, y)
    assert (layout.padded_h, layout.padded_w, layout.num_prefix) == (7, 7, 5)
    torch.testing.assert_close(seq[:, 2:5], m.split_tokens.expand(2, -1, -1))
    grid = seq[:, 5:].reshape(2, 7, 7, -1)
    for i in range(7):
        for j in range(7):
            if i >= 4:  # bottom pad row k uses pad vector k
                torch.testing.assert_close(grid[:, i, j], m.pad_tokens[i - 4].expand(2, -1))
            elif j >= 4:  # pad column k of every row uses pad vector k
                torch.testing.assert_close(grid[:, i, j], m.pad_tokens[j - 4].expand(2, -1))
    mask = layout.pad_mask()
    assert mask.sum() == 49 - 16 and not mask[:4, :4].any()
    m(x, t, y).square().mean().backward()
    assert m.pad_tokens.grad is not None and m.pad_tokens.grad.abs().min(1).values.gt(0).all()
    assert m.split_tokens.grad is not None and m.split_tokens.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- forward/backward


def test_tiny_forward_backward_at_two_resolutions_one_non_square():
    m = tiny(64)
    for h, w in [(8, 8), (8, 12)]:  # 64x64 and 64x96 px (128 px runs in the checkpoint test)
        m.zero_grad()
        x, t, y = inputs(2, h, w)
        out = m(x, t, y)
        assert out.shape == (2, 4, h, w) and torch.isfinite(out).all()
        out.square().mean().backward()
        grads = [p.grad for p in m.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert m.blocks[2].mixer.A_log.grad.abs().sum() > 0


def test_ablation_switches():
    x, t, y = inputs(1, 8, 8)
    m = tiny(64, pad_tokens=False, smoothers=False, long_skips=False, scan_directions=2)
    names = {n for n, _ in m.named_parameters()}
    assert not any(("pad" in n or "split" in n or "smoother" in n or "skip" in n) for n in names)
    assert m.seq_len() == 2 + 16 and set(m.schedule) == {0, 1}
    assert m(x, t, y).shape == (1, 4, 8, 8)
    assert set(tiny(64, scan_directions=1).schedule) == {0}
    with pytest.raises(ValueError, match="scan_directions"):
        tiny(64, scan_directions=3)
    with pytest.raises(ValueError, match="divisible"):
        m(torch.randn(1, 4, 9, 8), t, y)


def test_scan_backend_is_per_model_and_switchable():
    m = tiny(64)
    assert {b.mixer.scan_backend for b in m.blocks} == {"ref"}
    m.scan_backend = "auto"
    assert {b.mixer.scan_backend for b in m.blocks} == {"auto"}


@pytest.mark.skipif("cpu" not in scan_backends(), reason="the 'cpu' scan backend is not built")
def test_ref_and_cpu_backends_agree():
    m = tiny(64)
    x, t, y = inputs(2, 8, 12)
    with torch.no_grad():
        ref = m(x, t, y)
        m.scan_backend = "cpu"
        fast = m(x, t, y)
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-5)


def test_bf16_autocast_on_cpu():
    m = tiny(64)
    x, t, y = inputs(2, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x, t, y)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    ref = m(x, t, y)
    assert (out - ref).abs().max() < 0.05 * ref.abs().max() + 0.05
    pure = m.to(torch.bfloat16)(x.bfloat16(), t, y)  # parameters in bf16, no autocast
    assert pure.dtype == torch.bfloat16 and torch.isfinite(pure).all()
    assert (pure.float() - ref).abs().max() < 0.05 * ref.abs().max() + 0.05


# ----------------------------------------------------------------------------- checkpoints


def test_checkpoint_from_64px_loads_into_128px_model():
    src = tiny(64)
    with torch.no_grad():
        src.pos_embed.normal_()
    dst = tiny(128)
    assert dst.pos_embed.shape == (1, 8, 8, 64) and src.pos_embed.shape == (1, 4, 4, 64)
    dst.load_state_dict(src.state_dict())  # strict
    torch.testing.assert_close(dst.pos_embed, resize_pos_embed(src.pos_embed, (8, 8)))
    # the 64-px model run at 128 px resizes at run time exactly as the loaded one was resized
    x, t, y = inputs(1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(dst(x, t, y), src(x, t, y))
    # ... and back down, non-square included
    back = tiny((64, 96))
    back.load_state_dict(dst.state_dict())
    assert back.pos_embed.shape == (1, 4, 6, 64)


def test_checkpoint_of_another_architecture_is_a_clear_error():
    m = tiny(64)
    other = create_model("DiM-T/2", 64, depth=3, hidden_size=32)
    with pytest.raises(RuntimeError) as err:
        m.load_state_dict(other.state_dict())
    msg = str(err.value)
    assert "blocks.3.mixer.in_proj.weight" in msg  # missing
    assert "size mismatch for pos_embed" in msg  # the resize hook leaves width mismatches alone
    foreign = {"blocks.0.attn.qkv.weight": torch.zeros(3, 3), "t_embedder.mlp.0.weight": 0}
    with pytest.raises(RuntimeError, match=r"blocks\.0\.attn\.qkv\.weight"):
        m.load_state_dict(foreign)

"""What the wait between `triton_fused`'s two GEMMs costs: the call as it runs, against the same kernels with
down free to start before gate/up ends (notes, "Run 24").

Down reads gate/up's whole output, so it starts only once gate/up's last tile is written, and while gate/up's
last programs run the rest of the SMs are idle. One kernel walking both GEMMs' tiles, down's tiles of an
expert started once its gate/up tiles are done, could fill that gap. Before writing it, this bounds what it
could gain. Per (model, T), bf16, uniform routing, the config table in force, each variant captured in a
CUDA graph and its replays timed (L2 flushed before each, `moe_lab.kernels.search.gpu_ms`):
- `call`: the backend's call itself;
- `serial`: alignment, gate/up, down, top-k sum, as a call runs them without `SPLIT` (the plan's whole launches;
  where the bucket's config has SPLIT, `call` runs the split instead);
- `overlapped`: the same launches, with down on a second stream forked after the alignment, so it runs beside
  gate/up on an intermediate written by an earlier replay (wrong numbers, the same work): no wait at all;
- `split_h` (Triton-tile configs): the row blocks cut at h, each part's gate/up then down on its own stream,
  so each part's down waits only for its own gate/up and runs beside the other part's (real numbers);
- `up`, `down`, `sum`: alignment and gate/up; down alone; the sum alone (pieces, for reading the others).
`serial`'s and `split_h`'s outputs are checked against the call's (`same_bits`). `serial - overlapped` bounds
what removing the wait could save. Writes boundary_probe.csv under --out.

    PYTHONPATH=.:benchmarks python benchmarks/boundary_probe.py --models olmoe-1b-7b --tokens 512 --out $OUT
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from bench_rows import versions, write_rows

from moe_lab.backends.triton_fused import _PLANS, _stored_weights, triton_fused_experts
from moe_lab.harness.roofline import experts_cost, floor_ms, measure_roofline
from moe_lab.kernels.ops import current_stream
from moe_lab.kernels.search import gpu_ms
from moe_lab.routing import synthetic_routing
from moe_lab.shapes import build_experts, get_shape
from moe_lab.tune import median_ms


class Launches:
    """A plan's launches on fixed buffers, each a callable on a given stream (the Triton-tile path and the
    warp-specialized one; no A_TMA: this probe does not gather the tokens first)."""

    def __init__(self, experts, x_TH, ids_TK, w_TK):
        triton_fused_experts(experts, x_TH, ids_TK, w_TK)  # builds and compiles the plan
        (self.plan,) = _PLANS[experts].values()
        p = self.plan
        if p.decode or getattr(p, "a_tma_up", False):
            raise ValueError("boundary_probe: decode or A_TMA gate/up configs are not probed")
        self.experts, self.x_TH, self.ids_TK, self.w_TK = experts, x_TH, ids_TK, w_TK
        self.ids_S, self.rw_S = ids_TK.reshape(-1).contiguous(), w_TK.reshape(-1).contiguous()
        self.w_up, self.w_down, *_ = _stored_weights(experts)
        dev, P = x_TH.device, p.B * p.bm
        stream = current_stream(dev)
        self.sorted_P, self.block_expert_B, self.expert_block_E1 = p._align(stream, self.ids_S)
        self.a_PI = torch.empty(P, p.I, dtype=p.dtype, device=dev)
        self.y = torch.empty(P if p.ws else p.S, p.H, dtype=p.dtype, device=dev)
        self.pair_row_S = torch.empty(p.S, dtype=torch.int32, device=dev)
        self.out_TH = torch.empty(p.T, p.H, dtype=p.dtype, device=dev)
        self.parts = {}

    def call(self) -> None:
        """The backend's own call, for checking `serial` against."""
        triton_fused_experts(self.experts, self.x_TH, self.ids_TK, self.w_TK)

    def align(self, stream: int) -> None:
        p = self.plan
        sorted_P, block_expert_B, expert_block_E1 = p._align(stream, self.ids_S)
        for mine, new in ((self.sorted_P, sorted_P), (self.block_expert_B, block_expert_B),
                          (self.expert_block_E1, expert_block_E1)):
            mine.copy_(new)  # the later launches read fixed buffers (a copy: tiny next to the GEMMs)

    def up(self, stream: int) -> None:
        p = self.plan
        if p.ws:
            cfg = p.ws_cfg["up"]
            p.up(stream, self._rows(self.x_TH, cfg["BLOCK_K"]), p._ws_descriptor("up", self.w_up, p.up_tma),
                 self._rows(self.a_PI, cfg["BLOCK_N"]), self.block_expert_B, self.expert_block_E1, self.sorted_P,
                 self.rw_S, self.x_TH, self.pair_row_S, *p.up_scalars)
        else:
            w = p._descriptor("up", self.w_up, p.up_tma) if p.up_tma else self.w_up
            p.up(stream, self.x_TH, self.x_TH, w, self.w_up, self.a_PI, self.sorted_P, self.block_expert_B,
                 *p.up_scalars, self.sorted_P, 0)  # no `ready` counters: a placeholder

    def down(self, stream: int) -> None:
        p = self.plan
        if p.ws:
            cfg = p.ws_cfg["down"]
            p.down(stream, self._rows(self.a_PI, cfg["BLOCK_K"]),
                   p._ws_descriptor("down", self.w_down, p.down_tma), self._rows(self.y, cfg["BLOCK_N"]),
                   self.block_expert_B, self.expert_block_E1, self.sorted_P, self.rw_S, self.a_PI,
                   self.pair_row_S, *p.down_scalars)
            return
        w = p._descriptor("down", self.w_down, p.down_tma) if p.down_tma else self.w_down
        a = a_half = self.a_PI
        if p.a_tma_down:
            from moe_lab.kernels.ops import _row_blocks

            a = _row_blocks(self.a_PI, p.a_boxes[1])
            a_half = _row_blocks(self.a_PI, p.a_half_boxes[1]) if p.half_tail else a
        p.down(stream, a, a_half, w, self.w_down, self.y, self.rw_S, self.sorted_P, self.block_expert_B,
               *p.down_scalars, self.sorted_P, 0)

    def up_part(self, stream: int, m0: int, m1: int) -> None:
        """Gate/up over row blocks [m0, m1) only (Triton tiles; views of the block arrays, no kernel change)."""
        p, bm = self.plan, self.plan.bm
        launch = self._part(p.up, m0, m1, p.I // p.up.consts["BLOCK_N"] if p.I % p.up.consts["BLOCK_N"] == 0
                            else p.I // p.up.consts["BLOCK_N"] + 1)
        w = p._descriptor("up", self.w_up, p.up_tma) if p.up_tma else self.w_up
        scalars = list(p.up_scalars)
        scalars[4] = m1 - m0  # num_blocks_m
        launch(stream, self.x_TH, self.x_TH, w, self.w_up, self.a_PI[m0 * bm:], self.sorted_P[m0 * bm:],
               self.block_expert_B[m0:], *scalars, self.sorted_P, 0)

    def down_part(self, stream: int, m0: int, m1: int) -> None:
        """Down over row blocks [m0, m1) only (Triton tiles)."""
        p, bm = self.plan, self.plan.bm
        bn = p.down.consts["BLOCK_N"]
        launch = self._part(p.down, m0, m1, (p.H + bn - 1) // bn)
        w = p._descriptor("down", self.w_down, p.down_tma) if p.down_tma else self.w_down
        scalars = list(p.down_scalars)
        scalars[3] = m1 - m0
        a = a_half = self.a_PI[m0 * bm:]
        if p.a_tma_down:
            from moe_lab.kernels.ops import _row_blocks

            a, a_half = (_row_blocks(a, boxes[1]) for boxes in (p.a_boxes, p.a_half_boxes))
        launch(stream, a, a_half, w, self.w_down, self.y, self.rw_S, self.sorted_P[m0 * bm:],
               self.block_expert_B[m0:], *scalars, self.sorted_P, 0)

    def _part(self, launch, m0: int, m1: int, cols: int):
        from moe_lab.kernels.ops import _Launch

        key = (id(launch), m0, m1)
        if key not in self.parts:
            self.parts[key] = _Launch(launch.kernel, ((m1 - m0) * cols,), launch.consts, launch.opts)
        return self.parts[key]

    def sum(self, stream: int) -> None:
        p = self.plan
        if p.ws:
            p.sum(stream, self.y, self.out_TH, self.pair_row_S, self.y, 0, self.expert_block_E1, p.E, p.T, p.H, 0)
        else:
            p.sum(stream, self.y, self.out_TH, self.y, self.a_PI, p.bm * p.I * self.a_PI.element_size(),
                  self.expert_block_E1, p.E, p.T, p.H, 0)

    def _rows(self, t_RC, cols: int):
        from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

        p = self.plan
        box = [p.bm // 2 if p.half_tail else p.bm, cols]
        return TensorDescriptor(t_RC, list(t_RC.shape), [t_RC.stride(0), 1], box, p._layout(box))


def split_points(plan) -> list[int]:
    """Row blocks at which to split: halves of the blocks that can be real (about cdiv(S, BM) + hit experts / 2
    of the B launched hold rows under uniform routing), and of all B."""
    real = min(plan.B, -(-plan.S // plan.bm) + plan.E // 2)
    return sorted({real // 2, real * 2 // 3, plan.B // 2})


def variants(L: Launches) -> dict:
    """name -> a callable that runs that variant on the current stream (capturable)."""
    dev = L.x_TH.device

    def on_current(*steps):
        def run():
            s = current_stream(dev)
            for step in steps:
                step(s)
        return run

    def overlapped():
        main = torch.cuda.current_stream(dev)
        L.align(main.cuda_stream)
        side = torch.cuda.Stream(dev)
        side.wait_stream(main)
        L.up(main.cuda_stream)
        with torch.cuda.stream(side):
            L.down(side.cuda_stream)
        main.wait_stream(side)
        L.sum(main.cuda_stream)

    def split(h: int):
        def run():
            main = torch.cuda.current_stream(dev)
            L.align(main.cuda_stream)
            side = torch.cuda.Stream(dev)
            side.wait_stream(main)
            L.up_part(main.cuda_stream, 0, h)
            with torch.cuda.stream(side):
                L.up_part(side.cuda_stream, h, L.plan.B)
                L.down_part(side.cuda_stream, h, L.plan.B)
            L.down_part(main.cuda_stream, 0, h)
            main.wait_stream(side)
            L.sum(main.cuda_stream)
        return run

    splits = {} if L.plan.ws else {f"split_{h}": split(h) for h in split_points(L.plan)}
    return {**splits, "call": L.call, "serial": on_current(L.align, L.up, L.down, L.sum), "overlapped": overlapped,
            "up": on_current(L.align, L.up), "down": on_current(L.down), "sum": on_current(L.sum)}


def points(models: str, tokens: str, dev: torch.device):
    """(model, T, experts, Launches) per point: bf16 experts built once per model, uniform routing seeded by T."""
    for model in models.split(","):
        shape = get_shape(model)
        experts = build_experts(model, device=dev, dtype=torch.bfloat16)
        for T in map(int, tokens.split(",")):
            ids_TK, w_TK = synthetic_routing("uniform", T, shape.experts, shape.top_k, seed=T, device=dev)
            x_TH = torch.randn(T, shape.hidden, generator=torch.Generator().manual_seed(T)).to(dev, torch.bfloat16)
            _PLANS.pop(experts, None)
            yield model, T, experts, Launches(experts, x_TH, ids_TK, w_TK)


def alternating_us(fns: dict, dev: torch.device, rounds: int, reps: int) -> dict[str, float]:
    """name -> median over rounds of each callable's CUDA-graph replay time (us), in turned order every other
    round (whichever runs second can come out slower)."""
    times = {name: [] for name in fns}
    for r in range(rounds):
        for name in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
            times[name].append(gpu_ms(fns[name], dev, reps=reps) * 1e3)
    return {name: sorted(us)[len(us) // 2] for name, us in times.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="olmoe-1b-7b")
    p.add_argument("--tokens", default="512")
    p.add_argument("--rounds", type=int, default=5, help="rounds over the variants, in turned order every other")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--out", default="out")
    args = p.parse_args(argv)
    dev = torch.device("cuda")
    roof = measure_roofline(dev, torch.bfloat16, timer=lambda fn: median_ms(fn, dev, reps=10))
    rows = []
    for model, T, experts, L in points(args.models, args.tokens, dev):
        fns = variants(L)
        want_TH = triton_fused_experts(experts, L.x_TH, L.ids_TK, L.w_TK).clone()
        same = {}
        for name in [n for n in fns if n == "serial" or n.startswith("split")]:
            L.out_TH.zero_()
            fns[name]()
            same[name] = bool(torch.equal(L.out_TH, want_TH))
        print(f"{model} T={T}: output equals the call's bit for bit: {same}", flush=True)
        floor_us = floor_ms(experts_cost(get_shape(model), L.ids_TK, 2), roof) * 1e3
        for name, us in alternating_us(fns, dev, args.rounds, args.reps).items():
            rows.append(dict(model=model, T=T, variant=name, us=round(us, 2), floor_us=round(floor_us, 2),
                             frac=round(floor_us / us, 4), ws=L.plan.ws, same_bits=same.get(name, ""),
                             **versions()))
            print(f"{model} T={T} {name}: {us:.1f} us", flush=True)
    write_rows(rows, Path(args.out), "boundary_probe.csv")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

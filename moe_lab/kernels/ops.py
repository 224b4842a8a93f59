"""Launch plans for the fused experts kernels: tensors in, tensors out, no host synchronisation.

Every launch size comes from shapes (T, K, E, H, I) and the config, never from routing data, so a call
can be captured in a CUDA graph. A `Plan` is built once per (module, input metadata) and holds every
launch's grid and scalar arguments; after a launch has compiled, later calls go straight to the
compiled kernel's launcher (`CompiledKernel.run`, the call Triton's own `JITFunction.run` ends in),
skipping the per-call argument binding: the host cost of a call is then a few allocations and
launches. Legend as in `fused_moe`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton

from moe_lab.backends.common import log_once
from moe_lab.kernels import INTERPRETED
from moe_lab.kernels.align import (CHUNK, LABEL_BLOCKS, ONE_LAUNCH_MAX_PAIRS, SCAN_ROWS, _align_count_kernel,
                                   _align_kernel, _align_scatter_kernel, _gather_rows_kernel, count_block, e_pad,
                                   max_blocks)
from moe_lab.kernels.configs import decode_evicts_first
from moe_lab.kernels.fused_moe import (_down_decode_kernel, _down_grouped_kernel, _gate_up_decode_kernel,
                                       _gate_up_grouped_kernel)
from moe_lab.kernels.l2_temps import LINE, l2_hints_available
from moe_lab.kernels.pdl import pdl_available
from moe_lab.kernels.ready import COUNTERS as READY_COUNTERS
from moe_lab.kernels.topk_sum import TILE as SUM_TILE
from moe_lab.kernels.topk_sum import _topk_sum_kernel

try:
    from triton import knobs as _knobs
except ImportError:  # older triton: no hooks object, always the JIT path
    _knobs = None


@dataclass(frozen=True)
class GateSpec:
    """What the gate/up epilogue computes: gate mode (0 none, 1 concatenated, 2 interleaved), activation code."""

    gate_mode: int
    act: int
    limit: float = 7.0
    alpha: float = 1.702


class _Launch:
    """One kernel launch with a fixed grid and fixed scalars; the per-call tensors are passed at call time.

    The first call goes through `kernel[grid](...)` (which compiles); later calls through the compiled
    kernel's launcher with the same argument list, unless a launch hook is set (profilers) or the
    kernels are interpreted, where the JIT path stays.
    """

    __slots__ = ("kernel", "grid", "consts", "opts", "compiled", "tail", "direct")

    def __init__(self, kernel, grid, consts: dict, opts: dict):
        self.kernel, self.grid, self.consts, self.opts = kernel, tuple(grid) + (1,) * (3 - len(grid)), consts, opts
        self.compiled = None
        self.tail = None
        self.direct = not INTERPRETED and _knobs is not None

    def __call__(self, stream: int, *args):
        c = self.compiled
        if c is not None and not (_knobs.runtime.launch_enter_hook.calls or _knobs.runtime.launch_exit_hook.calls):
            g0, g1, g2 = self.grid
            try:
                c.run(g0, g1, g2, stream, c.function, c.packed_metadata, None, None, None, *args, *self.tail)
                return
            except (TypeError, ValueError, SystemError, AttributeError) as err:  # launcher rejected the arguments
                self.compiled, self.direct = None, False
                name = getattr(self.kernel, "__name__", "a kernel")
                log_once(f"moe_lab triton_fused: direct launch of {name} failed ({err}); "
                         "using Triton's JIT launch path")
        k = self.kernel[self.grid](*args, **self.consts, **self.opts)
        if c is None and self.direct and hasattr(k, "packed_metadata"):
            names = list(self.kernel.arg_names)
            if names[:len(args)] and set(names[len(args):]) == set(self.consts):
                self.tail = tuple(self.consts[n] for n in names[len(args):])
                self.compiled = k


_raw_stream = None  # Triton's driver's current-stream function, looked up on the first CUDA call


def current_stream(device: torch.device) -> int:
    """The raw handle of `device`'s current CUDA stream, read as Triton's own launches read it (a C call where
    `torch.cuda.current_stream` builds a Stream object: a few microseconds per call at decode); 0 off CUDA.
    A device without an index (`cuda`) means the current one, as in torch."""
    global _raw_stream
    if device.type != "cuda":
        return 0
    if _raw_stream is None:
        _raw_stream = triton.runtime.driver.active.get_current_stream
    return _raw_stream(torch.cuda.current_device() if device.index is None else device.index)


GATHER_ROWS = 16  # rows per program of the token gather (A_TMA); every BLOCK_M is a multiple


UNROLL_MAX_VALUES = 384  # weight values per thread that a fully unrolled decode kernel may have in flight


def _unrolls(loads: int, cfg: dict) -> bool:
    """Whether a decode kernel issuing `loads` (BLOCK_N, BLOCK_K) weight tiles per program unrolls them all:
    only where they fit in registers (gpt-oss's decode, 768 values per thread unrolled, ran 7x slower)."""
    return loads * cfg["BLOCK_N"] * cfg["BLOCK_K"] // (32 * cfg["num_warps"]) <= UNROLL_MAX_VALUES


def _opts(cfg: dict, pdl: bool) -> dict:
    """Launch options of a kernel config: warps, stages, and `launch_pdl` where PDL is on."""
    opts = {"num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"]}
    if pdl:
        opts["launch_pdl"] = True
    return opts


def _tma_view(strides: tuple[int, int, int], E: int, rows: int, k: int, block_rows: int, block_k: int,
              what: str) -> tuple[tuple[int, int], bool, tuple[int, int]]:
    """(2D shape, transposed storage?, box) of a weight's TMA view from the strides of its (E, rows, K) view;
    ValueError where TMA does not apply (a K tile would cross experts, or the storage is not contiguous)."""
    se, sr, sk = strides
    if k % block_k:
        raise ValueError(f"triton_fused: TMA on the {what} weight needs its reduction size {k} to be a multiple "
                         f"of BLOCK_K {block_k}")
    if sk == 1 and sr == k and se == rows * k:
        return (E * rows, k), False, (block_rows, block_k)
    if sr == 1 and sk == rows and se == rows * k:
        return (E * k, rows), True, (block_k, block_rows)
    raise ValueError(f"triton_fused: TMA on the {what} weight needs it contiguous as stored (strides {strides})")


class Plan:
    """Every launch of one experts call for fixed shapes, layout, dtype and config, all on the caller's stream. With
    the config's `"SPLIT": 1` (Triton tiles) down runs in two parts of the row blocks after one gate/up launch, the
    launches ordered by done-counters (`ready`): part one's down starts beside gate/up's last wave and part two's
    fills part one's."""

    def __init__(self, T: int, K: int, E: int, H: int, I: int, dtype: torch.dtype, spec: GateSpec, config: dict,
                 up_strides: tuple[int, int, int], down_strides: tuple[int, int, int],
                 bias_strides: tuple[int, int, int, int] | None, x_strides: tuple[int, int], reduce: bool,
                 pdl: bool = False, ws_sms: int = 0, l2_hints: bool = False):
        """pdl: launch with programmatic dependent launch (`moe_lab.kernels.pdl`) where the device has it;
        a config's `"PDL": 0` turns it off. ws_sms: the device's SM count where it runs the warp-specialized
        GEMMs (`ws_available`), else 0; a config's `"ws"` entry takes them where they apply (`ws_refusal`),
        else its Triton tiles run, with a log line saying why. l2_hints: the device takes `l2_temps`' hints
        (`l2_hints_available`), which a config's `"TEMPS_L2": 1` asks for on the Triton-tile path."""
        self.T, self.K, self.E, self.H, self.I, self.dtype, self.reduce = T, K, E, H, I, dtype, reduce
        self.x_strides = x_strides
        self.S = S = T * K
        self.has_bias = bias_strides is not None
        bu0, bu1, bd0, bd1 = bias_strides or (0, 0, 0, 0)
        self.out_rows = T if reduce else S
        self.decode = config["path"] == "decode"
        self.pdl = pdl = bool(pdl and config.get("PDL", 1))
        self.temps_l2 = False
        self.split = config.get("SPLIT", 0)
        if self.split not in (0, 1):
            raise ValueError(f"triton_fused: SPLIT is 0 (down in one launch) or 1 (in two parts, `ready`), "
                             f"not {self.split!r}")
        self.sum_tile = {**SUM_TILE, **config.get("SUM", {})}  # the top-k sum's tile: the config's "SUM" over TILE
        common = dict(HAS_BIAS=self.has_bias, PDL=pdl)
        if S == 0:
            return
        if self.decode:
            up, down = config["up"], config["down"]
            common["W_EVICT"] = "evict_first" if decode_evicts_first(config, T) else ""
            self.up = _Launch(_gate_up_decode_kernel, (S, triton.cdiv(I, up["BLOCK_N"])),
                              dict(GATE_MODE=spec.gate_mode, ACT=spec.act, BLOCK_N=up["BLOCK_N"],
                                   BLOCK_K=up["BLOCK_K"], NUM_K=triton.cdiv(H, up["BLOCK_K"]),
                                   EVEN_K=H % up["BLOCK_K"] == 0,
                                   UNROLL=_unrolls(triton.cdiv(H, up["BLOCK_K"]) * (2 if spec.gate_mode else 1), up),
                                   **common), _opts(up, pdl))
            self.up_scalars = (K, H, I, E, *x_strides, *up_strides, bu0, bu1, spec.limit, spec.alpha)
            self.down = _Launch(_down_decode_kernel, (self.out_rows, triton.cdiv(H, down["BLOCK_N"])),
                                dict(PAIRS=K if reduce else 1, REDUCE=reduce, BLOCK_N=down["BLOCK_N"],
                                     BLOCK_K=down["BLOCK_K"], NUM_K=triton.cdiv(I, down["BLOCK_K"]),
                                     EVEN_K=I % down["BLOCK_K"] == 0,
                                     UNROLL=_unrolls((K if reduce else 1) * triton.cdiv(I, down["BLOCK_K"]), down),
                                     **common), _opts(down, pdl))
            self.down_scalars = (H, I, E, *down_strides, bd0, bd1, H)
            return
        ws = config.get("ws")
        why_not = ws and ws_refusal(ws, ws_sms, dtype, spec, self.has_bias, reduce, up_strides, down_strides,
                                    x_strides, E, H, I)
        if why_not:
            log_once(f"moe_lab triton_fused: the config's warp-specialized GEMMs do not apply here ({why_not}); "
                     "running its Triton tiles")
        self.ws = bool(ws) and not why_not
        if self.ws:
            self._init_ws(ws, ws_sms, spec, up_strides, down_strides, config)
            return
        bm, up, down = config["BLOCK_M"], config["up"], config["down"]
        B = self._init_align(bm, config)
        dot_mode = 2 if INTERPRETED else (1 if dtype == torch.float32 else 0)
        one_dot = bool(up.get("ONE_DOT", 0)) and spec.gate_mode != 0
        self.up_tma = self.down_tma = None  # TMA views of the weights: (2D shape, transposed?, box)
        if up.get("TMA", 0):
            if one_dot != (spec.gate_mode == 2):
                raise ValueError("triton_fused: TMA on the gate/up weight loads one box per tile: ONE_DOT=1 for an "
                                 "interleaved layout, 0 otherwise")
            N = 2 * I if spec.gate_mode else I
            self.up_tma = _tma_view(up_strides, E, N, H, up["BLOCK_N"] * (2 if one_dot else 1), up["BLOCK_K"],
                                    "gate/up")
        if down.get("TMA", 0):
            self.down_tma = _tma_view(down_strides, E, H, I, down["BLOCK_N"], down["BLOCK_K"], "down")
        self._descriptors: dict[str, tuple[int, object]] = {}
        self.a_tma_up, self.a_tma_down = bool(up.get("A_TMA", 0)), bool(down.get("A_TMA", 0))
        for on, cols, what in ((self.a_tma_up, H, "gathered tokens"), (self.a_tma_down, I, "intermediate")):
            if on and (cols * dtype.itemsize) % 16:
                raise ValueError(f"triton_fused: A_TMA on the {what} needs rows of a multiple of 16 bytes "
                                 f"({cols} x {dtype.itemsize} bytes)")
        if self.a_tma_up:
            if bm % GATHER_ROWS:
                raise ValueError(f"triton_fused: A_TMA needs BLOCK_M a multiple of {GATHER_ROWS}, not {bm}")
            self.gather = _Launch(_gather_rows_kernel, (B * bm // GATHER_ROWS,),
                                  dict(BLOCK_M=bm, ROWS=GATHER_ROWS, BLOCK_H=min(512, triton.next_power_of_2(H)),
                                       PDL=pdl), _opts({"num_warps": 4, "num_stages": 1}, pdl))
        self.half_tail = bool(config.get("HALF_TAIL", 0))
        if self.half_tail and bm < 32:
            raise ValueError(f"triton_fused: HALF_TAIL needs BLOCK_M >= 32 (half blocks of at least 16 rows), "
                             f"not {bm}")
        self.temps_l2 = bool(config.get("TEMPS_L2", 0)) and self._temps_l2_fit(l2_hints)
        common["OUT_EVICT"] = "evict_last" if self.temps_l2 else ""
        self.w_prefetch = self._w_prefetch_lines(config, ws_sms, up_strides)
        self.a_boxes = ([bm, up["BLOCK_K"]], [bm, down["BLOCK_K"]])
        self.a_half_boxes = ([bm // 2, up["BLOCK_K"]], [bm // 2, down["BLOCK_K"]])
        self.up = _Launch(_gate_up_grouped_kernel, (B * triton.cdiv(I, up["BLOCK_N"]),),
                          dict(GATE_MODE=spec.gate_mode, ACT=spec.act, DOT_MODE=dot_mode, BLOCK_M=bm,
                               BLOCK_N=up["BLOCK_N"], BLOCK_K=up["BLOCK_K"], GROUP_M=up["GROUP_M"],
                               EVEN_K=H % up["BLOCK_K"] == 0, ONE_DOT=one_dot, W_TMA=self.up_tma is not None,
                               W_T=bool(self.up_tma and self.up_tma[1]), A_TMA=self.a_tma_up,
                               HALF_TAIL=self.half_tail, W_PREFETCH_LINES=self.w_prefetch, READY=bool(self.split),
                               **common),
                          _opts(up, pdl))
        guess_blocks = E * max(1, triton.cdiv(triton.cdiv(S, E), bm))  # W_PREFETCH's guess: S / E pairs each
        self.up_scalars = (S, K, H, I, B, *x_strides, *up_strides, bu0, bu1, I, spec.limit, spec.alpha, E,
                           guess_blocks, ws_sms)  # the last: programs that prefetch, one wave of one per SM
        self.down = _Launch(_down_grouped_kernel, (B * triton.cdiv(H, down["BLOCK_N"]),),
                            dict(MUL_WEIGHT=reduce, DOT_MODE=dot_mode, BLOCK_M=bm, BLOCK_N=down["BLOCK_N"],
                                 BLOCK_K=down["BLOCK_K"], GROUP_M=down["GROUP_M"], EVEN_K=I % down["BLOCK_K"] == 0,
                                 W_TMA=self.down_tma is not None, W_T=bool(self.down_tma and self.down_tma[1]),
                                 A_TMA=self.a_tma_down, HALF_TAIL=self.half_tail, **common), _opts(down, pdl))
        self.down_scalars = (S, H, I, B, I, *down_strides, bd0, bd1, H)
        # parts of the row blocks, each (m0, gate/up launch or None, its scalars, down launch, its scalars), the
        # scalars ending with the `ready` arguments (unused without SPLIT: counter 0 of a placeholder)
        m1 = B // 2
        if self.split:
            self.parts = [self._split_part(0, m1), self._split_part(m1, B)]
        else:
            self.parts = [(0, self.up, (*self.up_scalars, 0), self.down, (*self.down_scalars, 0))]
        if reduce and K > 1:
            self.sum = self._sum_launch(indirect=False, discard=self.temps_l2, wait_down=bool(self.split))
            self.sum_waits_for = m1 * (self.down.grid[0] // B) if self.split else 0  # part one's down programs

    def _split_part(self, m0: int, m1: int) -> tuple:
        """SPLIT's part over row blocks [m0, m1) (its arrays are passed from m0 on): the first part holds the one
        gate/up launch (told where part two starts), each part a down launch of its blocks, which waits on its
        part's gate/up counter (part one's then bumps counter 2 for the sum; `ready`)."""
        down, B = self.down, self.B
        cols_up, cols_down = self.up.grid[0] // B, down.grid[0] // B
        first = m0 == 0
        down_part = _Launch(down.kernel, ((m1 - m0) * cols_down,),
                            {**down.consts, "READY_WAIT": 0 if first else 1, "READY_SIGNAL": 2 if first else -1},
                            down.opts)
        return (m0, self.up if first else None, (*self.up_scalars, m1) if first else None, down_part,
                (*self.down_scalars[:3], m1 - m0, *self.down_scalars[4:], (m1 - m0) * cols_up))

    def _init_align(self, bm: int, config: dict) -> int:
        """The alignment launches for row blocks of bm: one launch up to ONE_LAUNCH_MAX_PAIRS pairs, else two
        (`align`); a config's `"ONE_LAUNCH_ALIGN": 0` takes two at any size (for A/Bs). Under SPLIT it also
        zeroes the `ready` counters, stored after expert_block. Returns B, the blocks' upper bound."""
        S, E, pdl = self.S, self.E, self.pdl
        self.counters = READY_COUNTERS if self.split else 0
        self.bm = bm
        self.B = B = max_blocks(S, E, bm)
        self.e_pad = ep = e_pad(E)
        self.G = G = triton.cdiv(S, CHUNK)
        self.one_launch = S <= ONE_LAUNCH_MAX_PAIRS and bool(config.get("ONE_LAUNCH_ALIGN", 1))
        once = _opts({"num_warps": 4, "num_stages": 1}, pdl)
        if self.one_launch:
            self.align = [_Launch(_align_kernel, (G,),
                                  dict(E_PAD=ep, BLOCK_M=bm, CHUNK=CHUNK, COUNT_BLOCK=count_block(S),
                                       LABEL_BLOCKS=LABEL_BLOCKS, COUNTERS=self.counters, PDL=pdl), once)]
        else:
            self.align = [
                _Launch(_align_count_kernel, (G,), dict(E_PAD=ep, CHUNK=CHUNK, PDL=pdl), once),
                _Launch(_align_scatter_kernel, (G,), dict(E_PAD=ep, BLOCK_M=bm, CHUNK=CHUNK, SCAN_ROWS=SCAN_ROWS,
                                                          LABEL_BLOCKS=LABEL_BLOCKS, COUNTERS=self.counters,
                                                          PDL=pdl), once),
            ]
        return B

    def _w_prefetch_lines(self, config: dict, ws_sms: int, up_strides: tuple[int, int, int]) -> int:
        """The config's `"W_PREFETCH"`: how many 128-byte lines at the start of each gate/up weight row the first
        wave pulls into L2 while it waits on the alignment (`fused_moe._prefetch_guessed_tile`), a power of two;
        0 where it does not apply, with a log line saying why."""
        lines = int(config.get("W_PREFETCH", 0))
        if lines <= 0:
            return 0
        if lines & (lines - 1):
            raise ValueError(f"triton_fused: W_PREFETCH takes a power of two of 128-byte lines, not {lines}")
        why_not = ("it needs programmatic dependent launch (the first wave is resident before the alignment ends)"
                   if not self.pdl else
                   "it needs an sm90 GPU (its first wave: one program per SM)" if not ws_sms else
                   "the gate/up weight loads through TMA" if self.up_tma is not None else
                   "the gate/up weight rows are not contiguous along H" if up_strides[2] != 1 else None)
        if why_not:
            log_once(f"moe_lab triton_fused: the config's W_PREFETCH does not apply here ({why_not}); running "
                     "without it")
            return 0
        return min(lines, triton.next_power_of_2(triton.cdiv(self.H * self.dtype.itemsize, LINE)))

    def _sum_block_h(self) -> int:
        return min(self.sum_tile["BLOCK_H"], triton.next_power_of_2(self.H))

    def _temps_l2_fit(self, l2_hints: bool) -> bool:
        """Whether `l2_temps` applies to this call (a config asked for it); a log line where it does not."""
        item = self.dtype.itemsize
        why_not = ("this device or the interpreter takes no L2 hints" if not l2_hints else
                   "there is no top-k sum to end the marks" if not (self.reduce and self.K > 1) else
                   f"the hidden rows ({self.H} x {item} bytes) or the sum's column tiles are not whole 128-byte "
                   "lines" if (self.H * item) % LINE or (self._sum_block_h() * item) % LINE else None)
        if why_not:
            log_once(f"moe_lab triton_fused: the config's TEMPS_L2 does not apply here ({why_not}); running "
                     "without it")
        return why_not is None

    def _sum_launch(self, indirect: bool, discard: bool = False, wait_down: bool = False) -> _Launch:
        """The top-k sum over y in (t, k) order, or (indirect) over y in the aligned order through pair_row;
        discard: then drops y's and the intermediate's L2 lines (`l2_temps`); wait_down: also waits for SPLIT's
        part one down (`ready`)."""
        block_h, tile = self._sum_block_h(), self.sum_tile
        return _Launch(_topk_sum_kernel, (triton.cdiv(self.T, tile["BLOCK_T"]), triton.cdiv(self.H, block_h)),
                       dict(TOPK=self.K, BLOCK_T=tile["BLOCK_T"], BLOCK_H=block_h, INDIRECT=indirect,
                            DISCARD=discard, TOPK_P2=triton.next_power_of_2(self.K), READY_WAIT=wait_down,
                            PDL=self.pdl),
                       _opts({"num_warps": tile["num_warps"], "num_stages": 1}, self.pdl))

    def _init_ws(self, ws: dict, sms: int, spec: GateSpec, up_strides, down_strides, config: dict) -> None:
        """The warp-specialized path (`ws_grouped`): alignment, the two persistent GEMMs (one program per SM
        at most, launched without PDL: they start once the kernel before has ended; gate/up gathers the
        token rows itself and records each pair's row), the top-k sum through the pairs' rows."""
        from moe_lab.kernels.ws_grouped import _ws_grouped_kernel

        E, H, I = self.E, self.H, self.I
        B = self._init_align(ws["BLOCK_M"], config)
        up, down = ws["up"], ws["down"]
        N = 2 * I if spec.gate_mode else I
        self.up_tma = _tma_view(up_strides, E, N, H, up["BLOCK_N"], up["BLOCK_K"], "gate/up")
        self.down_tma = _tma_view(down_strides, E, H, I, down["BLOCK_N"], down["BLOCK_K"], "down")
        self._descriptors, self._layouts = {}, {}
        self.ws_cfg = ws
        self.half_tail = bool(ws.get("HALF_TAIL", 0))
        launches = []
        for cfg, view, cols, consts in (
                (up, self.up_tma, I, dict(GATED=spec.gate_mode == 1, ACT=spec.act, MUL_WEIGHT=False, GATHER=True)),
                (down, self.down_tma, H, dict(GATED=False, ACT=-1, MUL_WEIGHT=True, GATHER=False))):
            tiles = B * triton.cdiv(cols, cfg["BLOCK_N"])
            launches.append(_Launch(_ws_grouped_kernel, (min(sms, tiles),),  # num_warps: a Gluon kernel parameter
                                    dict(consts, W_T=view[1], GROUP_M=cfg["GROUP_M"],
                                         EXPERT_GROUPS=bool(cfg.get("EXPERT_GROUPS", 0)), STAGES=cfg["STAGES"],
                                         PINGPONG=bool(cfg.get("PINGPONG", 0)), BLOCK_M=self.bm,
                                         HALF_TAIL=self.half_tail, ONE_MMA=bool(cfg.get("ONE_MMA", 0)),
                                         X_L2_LAST=cfg.get("X_L2_LAST", 0),
                                         num_warps=cfg["num_warps"]), {}))
        self.up, self.down = launches
        self.up_scalars = (B, H, N, I, self.S, self.K, self.x_strides[0], spec.limit, spec.alpha)
        self.down_scalars = (B, I, H, 0, self.S, self.K, 0, spec.limit, spec.alpha)
        self.sum = self._sum_launch(indirect=True)

    def __call__(self, x_TH, ids_S, rw_S, w_up, w_down, b_up, b_down) -> torch.Tensor:
        """ids_S, rw_S: contiguous flat (S,) ids and weights; w_up / w_down / biases: the stored tensors."""
        dev = x_TH.device
        if self.S == 0:
            return torch.zeros(self.out_rows, self.H, dtype=self.dtype, device=dev)
        stream = current_stream(dev)
        b_up = b_up if self.has_bias else w_up  # a placeholder pointer when there is no bias
        b_down = b_down if self.has_bias else w_down
        S, H, I = self.S, self.H, self.I
        if self.decode:
            a_SI = torch.empty(S, I, dtype=torch.float32, device=dev)
            self.up(stream, x_TH, ids_S, w_up, b_up, a_SI, *self.up_scalars)
            out = torch.empty(self.out_rows, H, dtype=self.dtype, device=dev)
            self.down(stream, a_SI, ids_S, rw_S, w_down, b_down, out, *self.down_scalars)
            return out
        B, bm = self.B, self.bm
        sorted_P, block_expert_B, expert_block_E1 = self._align(stream, ids_S)
        if self.ws:
            return self._call_ws(stream, x_TH, sorted_P, block_expert_B, expert_block_E1, rw_S, w_up, w_down)
        x_rows = x_TH
        if self.a_tma_up:  # the tokens gathered once into the aligned order, then loaded as plain row blocks
            x_rows = torch.empty(B * bm, H, dtype=self.dtype, device=dev)
            self.gather(stream, x_TH, sorted_P, block_expert_B, x_rows, S, self.K, H, *self.x_strides)
        a_PI = torch.empty(B * bm, I, dtype=self.dtype, device=dev)
        y_SH = _line_aligned_empty(S, H, self.dtype, dev) if self.temps_l2 else torch.empty(S, H, dtype=self.dtype,
                                                                                              device=dev)
        ready = expert_block_E1[self.E + 1:] if self.counters else sorted_P  # sorted_P: a placeholder, never read
        args = (x_rows, a_PI, y_SH, sorted_P, block_expert_B, rw_S,
                self._descriptor("up", w_up, self.up_tma) if self.up_tma else w_up, b_up,
                self._descriptor("down", w_down, self.down_tma) if self.down_tma else w_down, b_down, ready)
        for part in self.parts:
            self._gemms(stream, part, *args)
        if not self.reduce or self.K == 1:
            return y_SH
        out_TH = torch.empty(self.T, H, dtype=self.dtype, device=dev)
        self.sum(stream, y_SH, out_TH, y_SH, a_PI, bm * I * self.dtype.itemsize, expert_block_E1, self.E, self.T, H,
                 self.sum_waits_for)
        return out_TH

    def _gemms(self, stream: int, part: tuple, x_rows, a_PI, y_SH, sorted_P, block_expert_B, rw_S, w_up, b_up,
               w_down, b_down, ready) -> None:
        """Gate/up then down over one part's row blocks (`parts`; SPLIT's second part has no gate/up) on `stream`.
        x_rows: the tokens, or with A_TMA the tokens gathered into the aligned order; w_up / w_down: the weights or
        their TMA descriptors; ready: SPLIT's counters (`ready`), else a placeholder."""
        m0, up, up_scalars, down, down_scalars = part
        if m0:  # the part's arrays from its first block on; y is indexed by pair, so it is passed whole
            r0 = m0 * self.bm
            sorted_P, block_expert_B, a_PI = sorted_P[r0:], block_expert_B[m0:], a_PI[r0:]
            x_rows = x_rows[r0:] if self.a_tma_up else x_rows
        if up is not None:  # SPLIT's gate/up is one launch over every block, in its first part
            self._up(stream, up, up_scalars, x_rows, sorted_P, block_expert_B, a_PI, w_up, b_up, ready)
        a_arg = a_half = a_PI
        if self.a_tma_down:
            a_arg = _row_blocks(a_PI, self.a_boxes[1])
            a_half = _row_blocks(a_PI, self.a_half_boxes[1]) if self.half_tail else a_arg
        down(stream, a_arg, a_half, w_down, b_down, y_SH, rw_S, sorted_P, block_expert_B, *down_scalars[:-1], ready,
             down_scalars[-1])

    def _up(self, stream: int, up, up_scalars: tuple, x_rows, sorted_P, block_expert_B, a_PI, w_up, b_up, ready
            ) -> None:
        """One gate/up launch over the row blocks its arrays start at (`_gemms`)."""
        x_arg = x_half = x_rows
        if self.a_tma_up:
            x_arg = _row_blocks(x_rows, self.a_boxes[0])
            x_half = _row_blocks(x_rows, self.a_half_boxes[0]) if self.half_tail else x_arg
        up(stream, x_arg, x_half, w_up, b_up, a_PI, sorted_P, block_expert_B, *up_scalars[:-1], ready, up_scalars[-1])

    def _align(self, stream: int, ids_S: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(sorted_P, block_expert_B, expert_block_E1): the pairs in the expert-aligned order, each row block's
        expert, each expert's first row block (`align`), then under SPLIT the `ready` counters, zeroed."""
        dev, S, B = ids_S.device, self.S, self.B
        sorted_P = torch.empty(B * self.bm, dtype=torch.int32, device=dev)
        block_expert_B = torch.empty(B, dtype=torch.int32, device=dev)
        expert_block_E1 = torch.empty(self.E + 1 + self.counters, dtype=torch.int32, device=dev)  # then `ready`'s
        if self.one_launch:
            cursor = torch.empty(self.G, self.e_pad, dtype=torch.int32, device=dev)
            self.align[0](stream, ids_S, sorted_P, block_expert_B, expert_block_E1, cursor, S, self.E, B,
                          triton.cdiv(B, self.G))
        else:
            partial = torch.empty(2 * self.G, self.e_pad, dtype=torch.int32, device=dev)
            self.align[0](stream, ids_S, partial, S, self.E)
            self.align[1](stream, ids_S, partial, sorted_P, block_expert_B, expert_block_E1, S, self.E, self.G, B,
                          triton.cdiv(B, self.G))
        return sorted_P, block_expert_B, expert_block_E1

    def _call_ws(self, stream, x_TH, sorted_P, block_expert_B, expert_block_E1, rw_S, w_up, w_down) -> torch.Tensor:
        """The warp-specialized path after the alignment: gate/up (gathering the token rows, recording each
        pair's row) into the aligned (P, I), down into the aligned (P, H) with the routing weights, the top-k
        sum through the pairs' rows."""
        from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

        dev, P, S, H, I = x_TH.device, self.B * self.bm, self.S, self.H, self.I
        up, down = self.ws_cfg["up"], self.ws_cfg["down"]
        if x_TH.data_ptr() % 16:
            raise ValueError("triton_fused: the warp-specialized GEMMs gather token rows 16 bytes at a time: "
                             "the tokens' storage must start 16-byte aligned")
        pair_row_S = torch.empty(S, dtype=torch.int32, device=dev)
        a_PI = torch.empty(P, I, dtype=self.dtype, device=dev)
        y_PH = torch.empty(P, H, dtype=self.dtype, device=dev)

        box_rows = self.bm // 2 if self.half_tail else self.bm

        def rows(t_RC, cols: int):  # TMA boxes of a row block (or half) and `cols` columns of a row-major activation
            return TensorDescriptor(t_RC, list(t_RC.shape), [t_RC.stride(0), 1], [box_rows, cols],
                                    self._layout([box_rows, cols]))

        self.up(stream, rows(x_TH, up["BLOCK_K"]), self._ws_descriptor("up", w_up, self.up_tma),
                rows(a_PI, up["BLOCK_N"]), block_expert_B, expert_block_E1, sorted_P, rw_S, x_TH, pair_row_S,
                *self.up_scalars)
        self.down(stream, rows(a_PI, down["BLOCK_K"]), self._ws_descriptor("down", w_down, self.down_tma),
                  rows(y_PH, down["BLOCK_N"]), block_expert_B, expert_block_E1, sorted_P, rw_S, a_PI, pair_row_S,
                  *self.down_scalars)
        out_TH = torch.empty(self.T, H, dtype=self.dtype, device=dev)
        self.sum(stream, y_PH, out_TH, pair_row_S, y_PH, 0, expert_block_E1, self.E, self.T, H, 0)
        return out_TH

    def _layout(self, box: list[int]):
        """`_nvmma_layout` of a box, made once per plan (9 us each, five per call)."""
        key = tuple(box)
        if key not in self._layouts:
            self._layouts[key] = _nvmma_layout(box, self.dtype)
        return self._layouts[key]

    def _ws_descriptor(self, which: str, w: torch.Tensor, view: tuple):
        """A stored weight's 2D view as a Gluon TMA descriptor, kept while the weight stays where it is."""
        from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

        cached = self._descriptors.get(which)
        if cached is None or cached[0] != w.data_ptr():
            (rows, cols), _, box = view
            desc = TensorDescriptor(w, [rows, cols], [cols, 1], list(box), self._layout(list(box)))
            cached = self._descriptors[which] = (w.data_ptr(), desc)
        return cached[1]


    def _descriptor(self, which: str, w: torch.Tensor, view: tuple):
        """The TMA descriptor of a stored weight's 2D view, kept while the weight stays where it is."""
        from triton.tools.tensor_descriptor import TensorDescriptor

        cached = self._descriptors.get(which)
        if cached is None or cached[0] != w.data_ptr():
            (rows, cols), _, box = view
            try:
                desc = TensorDescriptor(w, [rows, cols], [cols, 1], list(box))
            except AssertionError as err:  # base or row stride not 16-byte aligned
                raise ValueError(f"triton_fused: TMA on the {which} weight: {err}") from None
            cached = self._descriptors[which] = (w.data_ptr(), desc)
        return cached[1]


def _nvmma_layout(box: list[int], dtype: torch.dtype):
    """The shared-memory layout TMA and wgmma use for a (rows, cols) box of bf16 / fp16: the widest swizzle."""
    from triton.experimental.gluon import language as gl

    return gl.NVMMASharedLayout.get_default_for(box, gl.bfloat16 if dtype == torch.bfloat16 else gl.float16)


WS_SMEM_BYTES = 227 * 1024  # shared memory per program on the H100


def ws_available(device: torch.device) -> int:
    """The SM count where the warp-specialized GEMMs (`ws_grouped`) run on `device`: compiled kernels on an
    sm90 GPU (wgmma is Hopper's); else 0."""
    if INTERPRETED or device.type != "cuda" or torch.cuda.get_device_capability(device) != (9, 0):
        return 0
    return torch.cuda.get_device_properties(device).multi_processor_count


def ws_refusal(ws: dict, sms: int, dtype: torch.dtype, spec: GateSpec, has_bias: bool, reduce: bool,
               up_strides: tuple, down_strides: tuple, x_strides: tuple, E: int, H: int, I: int) -> str | None:
    """Why a config's `"ws"` entry cannot run this call, or None. Its keys: BLOCK_M, optional HALF_TAIL
    (half-height last blocks), and per GEMM ("up", "down") BLOCK_N, BLOCK_K, STAGES, num_warps (per
    consumer), GROUP_M, optional PINGPONG (two consumers), optional EXPERT_GROUPS (the GROUP_M groups start
    again at each expert's first block), and gate/up's optional ONE_MMA (gate and up as one wgmma) and
    X_L2_LAST (1 to 8: that many eighths of the token rows it gathers kept in L2 with the evict-last
    priority while it runs)."""
    if not sms:
        return "they need compiled kernels on an sm90 GPU"
    if dtype not in (torch.bfloat16, torch.float16):
        return f"they take bf16 or fp16, not {dtype}"
    if spec.gate_mode == 2:
        return "they take a concatenated gate or none, not an interleaved one"
    if has_bias:
        return "they take no bias"
    if not reduce:
        return "they end in the top-k sum (a post-expert norm needs the per-pair outputs)"
    bm, size = ws["BLOCK_M"], dtype.itemsize
    if ws.get("HALF_TAIL", 0) and bm < 128:
        return f"HALF_TAIL needs BLOCK_M >= 128 (half-height tiles of a warp group's 64 rows), not {bm}"
    for name, cfg, strides, rows, k, nw in (("up", ws["up"], up_strides, 2 * I if spec.gate_mode else I, H,
                                             2 if spec.gate_mode else 1),
                                            ("down", ws["down"], down_strides, H, I, 1)):
        if bm < 16 * cfg["num_warps"]:
            return f"{name}: BLOCK_M {bm} is less than 16 rows per consumer warp ({cfg['num_warps']} warps)"
        if cfg.get("ONE_MMA", 0):
            if nw != 2:
                return f"{name}: ONE_MMA joins a gate and an up tile; this GEMM has one weight tile"
            if strides[2] != 1:
                return f"{name}: ONE_MMA needs the weights stored untransposed (strides {strides})"
            if 2 * cfg["BLOCK_N"] > 256:
                return f"{name}: ONE_MMA's wgmma is 2 x BLOCK_N = {2 * cfg['BLOCK_N']} columns wide, at most 256"
        if name == "down" and cfg.get("X_L2_LAST", 0):
            return "down: X_L2_LAST keeps gate/up's gathered token rows in L2; down reads no token rows"
        if cfg.get("X_L2_LAST", 0) not in range(9):
            return f"{name}: X_L2_LAST is a number of eighths of the token rows, 0 to 8, not {cfg['X_L2_LAST']}"
        consumers = 2 if cfg.get("PINGPONG", 0) else 1
        if consumers == 2 and cfg["num_warps"] != 4:
            return f"{name}: PINGPONG takes consumers of one warp group (num_warps 4), not {cfg['num_warps']}"
        smem = size * (cfg["STAGES"] * cfg["BLOCK_K"] * (bm + nw * cfg["BLOCK_N"]) + consumers * bm * cfg["BLOCK_N"])
        if smem > WS_SMEM_BYTES:
            return f"{name}: its buffers take {smem} bytes of shared memory, more than {WS_SMEM_BYTES}"
        try:
            _tma_view(strides, E, rows, k, cfg["BLOCK_N"], cfg["BLOCK_K"], name)
        except ValueError as err:
            return str(err)
    for cols in (H, I):
        if (cols * size) % 16:
            return f"TMA needs rows of a multiple of 16 bytes ({cols} x {size})"
    if x_strides[1] != 1 or (x_strides[0] * size) % 16:
        return f"the token rows are gathered 16 bytes at a time: they must be contiguous, 16-byte aligned " \
               f"(strides {x_strides})"
    return None


def _line_aligned_empty(rows: int, cols: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An empty (rows, cols) tensor whose storage starts on a 128-byte L2 line (`l2_temps` discards its lines
    whole; CUDA's caching allocator starts every block on one anyway)."""
    flat = torch.empty(rows * cols + LINE // dtype.itemsize, dtype=dtype, device=device)
    skip = -flat.data_ptr() % LINE // dtype.itemsize
    return flat[skip:skip + rows * cols].view(rows, cols)


def _row_blocks(t_PC: torch.Tensor, box: list[int]):
    """A TMA descriptor of a contiguous (P, C) activation, loaded in (BLOCK_M, BLOCK_K) boxes."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    return TensorDescriptor(t_PC, list(t_PC.shape), [t_PC.shape[1], 1], box)


def fused_experts(
    x_TH: torch.Tensor, topk_ids_TK: torch.Tensor, topk_weights_TK: torch.Tensor,
    w_up_ENH: torch.Tensor, w_down_EHI: torch.Tensor, b_up_EN: torch.Tensor | None, b_down_EH: torch.Tensor | None,
    spec: GateSpec, config: dict, *, reduce: bool = True,
) -> torch.Tensor:
    """out[t] = sum_k w[t,k] * down_e(gate(up_e(x[t]))), e = ids[t,k], or with reduce=False the unweighted
    per-pair outputs y (S, H) in (t, k) order (for a post-expert norm applied by the caller).

    w_up_ENH / w_down_EHI are views in those index orders, any strides (transposed storage included).
    Builds a one-off plan; the backend caches its plans instead.
    """
    T, H = x_TH.shape
    K = topk_ids_TK.shape[1]
    E, _, _ = w_up_ENH.shape
    I = w_down_EHI.shape[2]
    has_bias = b_up_EN is not None
    plan = Plan(T, K, E, H, I, x_TH.dtype, spec, config, tuple(w_up_ENH.stride()), tuple(w_down_EHI.stride()),
                (*b_up_EN.stride(), *b_down_EH.stride()) if has_bias else None, tuple(x_TH.stride()), reduce,
                pdl=pdl_available(x_TH.device), ws_sms=ws_available(x_TH.device),
                l2_hints=l2_hints_available(x_TH.device))
    return plan(x_TH, topk_ids_TK.reshape(-1).contiguous(), topk_weights_TK.reshape(-1).contiguous(),
                w_up_ENH, w_down_EHI, b_up_EN, b_down_EH)

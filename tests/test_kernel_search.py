"""`moe-lab tune-kernels` (`moe_lab.kernels.search`) without a GPU: the candidate space, the coordinate
search against a stand-in timer, merging into the config file, and the file `get_config` reads.

The search on real kernels runs in tests/test_triton_fused.py (interpreter on CPU, GPU on CUDA)."""

from __future__ import annotations

import json

import pytest
import torch

from moe_lab.kernels import configs, search
from moe_lab.shapes import build_experts


def test_decode_candidates_only_for_few_pairs():
    few, many = search.candidates(S=128, E=60), search.candidates(S=129, E=60)
    assert any(c["path"] == "decode" for c in few)
    assert all(c["path"] == "grouped" for c in many)


@pytest.mark.parametrize("S,E,block_ms", [(8, 60, {16}), (2048, 60, {16, 32, 64, 128}), (32768, 60, {64, 128}),
                                          (131072, 128, {64, 128})])
def test_block_m_follows_pairs_per_expert(S, E, block_ms):
    assert set(search.grouped_space(S, E)) == block_ms


def test_wide_space_adds_only_where_pairs_per_expert_are_many():
    assert search.grouped_space(2048, 60, wide=True) == search.grouped_space(2048, 60)  # 34 pairs per expert
    wide = search.grouped_space(65536, 60, wide=True)  # 1092 per expert: BLOCK_M 256 added
    assert set(search.grouped_space(65536, 60)) == {64, 128} and set(wide) == {64, 128, 256}
    for ups, downs in wide.values():
        assert len(ups) == len(set(ups)) and len(downs) == len(set(downs))
        assert all(len(u) == 6 and u[5] in (0, 1) for u in ups) and all(len(d) == 5 for d in downs)
    narrow_ups = search.grouped_space(65536, 60)[128][0]
    assert set(narrow_ups) < set(wide[128][0])


def test_every_candidate_is_a_config_the_kernels_take():
    for cfg in search.candidates(S=64, E=8, wide=True) + search.candidates(S=100000, E=8, wide=True):
        tiles = [cfg["up"], cfg["down"]]
        assert all({"BLOCK_N", "BLOCK_K", "num_warps", "num_stages"} <= set(t) for t in tiles)
        if cfg["path"] == "grouped":
            assert cfg["BLOCK_M"] in (16, 32, 64, 128, 256) and "ONE_DOT" in cfg["up"] and "GROUP_M" in cfg["down"]


@pytest.fixture
def fake_kernels(monkeypatch):
    """triton_fused stands in as a recorder; the timer charges each config by `cost` (inf: it fails)."""
    seen: list[dict] = []
    state = {"cost": lambda cfg: 1.0, "wrong": lambda cfg: 1.0}  # wrong: factor on the right output

    def fake_fused(experts, x_TH, ids_TK, w_TK, *, config=None):
        seen.append(config)
        if state["cost"](config) == float("inf"):
            raise RuntimeError("out of resource: shared memory")
        return x_TH * state["wrong"](config)

    def fake_ms(fn, device, reps=10):
        fn()
        return state["cost"](seen[-1])

    import moe_lab.backends.grouped_mm as gm
    import moe_lab.backends.triton_fused as tf

    monkeypatch.setattr(tf, "triton_fused_experts", fake_fused)
    monkeypatch.setattr(gm, "grouped_mm_experts", lambda experts, x_TH, ids_TK, w_TK: x_TH)  # the right output
    monkeypatch.setattr(search, "gpu_ms", fake_ms)
    return seen, state


def tiny_inputs(T):
    experts = build_experts("tiny")
    ids_TK = torch.randint(0, 8, (T, 2))
    return experts, (torch.randn(T, 128), ids_TK, torch.rand(T, 2))


def test_search_finds_the_cheapest_config_of_its_space(fake_kernels):
    seen, state = fake_kernels
    experts, inputs = tiny_inputs(T=200)  # S=400 over 8 experts: grouped BLOCK_M 16 to 128
    target = search.grouped_config(64, (128, 64, 8, 8, 3, 1), (256, 64, 8, 8, 3))
    up_target, down_target = target["up"], target["down"]

    def cost(cfg):  # separable: the gate/up tile and the down tile each cost something, the target least
        if cfg.get("BLOCK_M") != 64:
            return 5.0
        return (1.0 + (cfg["up"] != up_target) + (cfg["down"] != down_target) + 0.5 * cfg.get("HALF_TAIL", 0)
                + 0.25 * cfg.get("TEMPS_L2", 0) + 0.125 * cfg.get("SPLIT", 0))

    state["cost"] = cost
    incumbent = configs.heuristic_config(200, 8, 128, 96, 2)
    results = search.search_bucket(experts, inputs, incumbent, wide=False, reps=1, log=print)
    assert json.loads(results[0][1]) == target and results[0][0] == 1.0
    assert [ms for ms, _ in results] == sorted(ms for ms, _ in results)
    assert len({k for _, k in results}) == len(results)  # each config timed once


def test_search_tries_half_tail_on_each_block_m_best(fake_kernels):
    seen, state = fake_kernels
    experts, inputs = tiny_inputs(T=200)  # S=400 over 8 experts: grouped BLOCK_M 16 to 128
    state["cost"] = lambda cfg: ((2.0 - cfg.get("HALF_TAIL", 0) + cfg.get("TEMPS_L2", 0) + cfg.get("SPLIT", 0))
                                 * (1 + (cfg.get("BLOCK_M") != 64)))
    incumbent = configs.heuristic_config(200, 8, 128, 96, 2)
    results = search.search_bucket(experts, inputs, incumbent, wide=False, reps=1, log=print)
    cfgs = [json.loads(k) for _, k in results]
    halves = [c for c in cfgs if c.get("HALF_TAIL") and not (c.get("TEMPS_L2") or c.get("SPLIT"))]
    # one half-tail variant per BLOCK_M from 32 on (16-row blocks have no 8-row half), each of that BLOCK_M's best
    assert sorted(c["BLOCK_M"] for c in halves) == [32, 64, 128]
    for half in halves:
        assert {k: v for k, v in half.items() if k != "HALF_TAIL"} in cfgs
    assert cfgs[0]["BLOCK_M"] == 64 and cfgs[0]["HALF_TAIL"] == 1 and results[0][0] == 1.0


@pytest.mark.parametrize("gain", [0.25, -0.25], ids=["faster", "slower"])
def test_search_tries_temps_l2_on_the_best_grouped_config(fake_kernels, gain):
    """The best grouped config timed once more with `"TEMPS_L2": 1` (`l2_temps`), kept only where faster."""
    seen, state = fake_kernels
    experts, inputs = tiny_inputs(T=200)
    state["cost"] = lambda cfg: (2.0 - cfg.get("HALF_TAIL", 0) - gain * cfg.get("TEMPS_L2", 0)
                                 + cfg.get("SPLIT", 0)) * (1 + (cfg.get("BLOCK_M") != 64))
    results = search.search_bucket(experts, inputs, configs.heuristic_config(200, 8, 128, 96, 2), wide=False, reps=1,
                                   log=print)
    cfgs = [json.loads(k) for _, k in results]
    marked = [c for c in cfgs if "TEMPS_L2" in c and "SPLIT" not in c and "SUM" not in c]
    best_plain = min((ms, k) for ms, k in results if "TEMPS_L2" not in k and "SPLIT" not in k)
    assert marked == [{**json.loads(best_plain[1]), "TEMPS_L2": 1}]  # once, on the best grouped config only
    assert ("TEMPS_L2" in cfgs[0]) == (gain > 0)


@pytest.mark.parametrize("gain", [0.25, -0.25], ids=["faster", "slower"])
def test_search_tries_split_last_on_the_best_grouped_config(fake_kernels, gain):
    """The best grouped config of all (TEMPS_L2's stage included) timed once more with `"SPLIT": 1` (down in
    two parts of the row blocks), kept only where faster."""
    seen, state = fake_kernels
    experts, inputs = tiny_inputs(T=200)
    state["cost"] = lambda cfg: (2.0 - cfg.get("HALF_TAIL", 0) - 0.5 * cfg.get("TEMPS_L2", 0)
                                 - gain * cfg.get("SPLIT", 0)) * (1 + (cfg.get("BLOCK_M") != 64))
    results = search.search_bucket(experts, inputs, configs.heuristic_config(200, 8, 128, 96, 2), wide=False, reps=1,
                                   log=print)
    cfgs = [json.loads(k) for _, k in results]
    split = [c for c in cfgs if "SPLIT" in c and "SUM" not in c]
    best_before = min((ms, k) for ms, k in results if "SPLIT" not in k and "SUM" not in k)
    assert json.loads(best_before[1]).get("TEMPS_L2") == 1
    assert split == [{**json.loads(best_before[1]), "SPLIT": 1}]  # once, on the best config of the stages before
    assert ("SPLIT" in cfgs[0]) == (gain > 0)


@pytest.mark.parametrize("tma,up_tma", [(True, 0), (True, 1), (False, 0)])
def test_search_tries_weight_prefetch_after_split(fake_kernels, tma, up_tma, monkeypatch):
    """On a GPU with TMA, the best grouped config after SPLIT's stage timed with each `W_PREFETCH_SPACE` line count,
    the fastest kept; not where its gate/up weight loads through TMA (W_PREFETCH does not apply there), nor
    without TMA (no sm90)."""
    seen, state = fake_kernels
    experts, inputs = tiny_inputs(T=200)
    monkeypatch.setattr(search, "_fit_block_k", lambda tile, size: tile)  # the TMA tiles as they are
    state["cost"] = lambda cfg: 9.0 if cfg.get("path") != "grouped" else (
        (3.0 - cfg.get("SPLIT", 0) - cfg.get("W_PREFETCH", 0) / 80 - (cfg["up"].get("TMA", 0) == up_tma)
         + cfg.get("TEMPS_L2", 0) + cfg.get("HALF_TAIL", 0) + cfg["up"].get("A_TMA", 0) + cfg["down"].get("A_TMA", 0))
        * (1 + (cfg["BLOCK_M"] != 64)))
    results = search.search_bucket(experts, inputs, configs.heuristic_config(200, 8, 128, 96, 2), wide=False, reps=1,
                                   log=print, tma=tma)
    cfgs = [json.loads(k) for _, k in results]
    prefetch = [c for c in cfgs if "W_PREFETCH" in c]
    if not tma or up_tma:
        assert prefetch == []
        return
    best_before = json.loads(min((ms, k) for ms, k in results if "W_PREFETCH" not in k)[1])
    assert best_before.get("SPLIT") == 1
    want = [{**best_before, "W_PREFETCH": n} for n in search.W_PREFETCH_SPACE]
    assert sorted(prefetch, key=lambda c: c["W_PREFETCH"]) == want
    assert cfgs[0] == {**best_before, "W_PREFETCH": max(search.W_PREFETCH_SPACE)}


@pytest.mark.parametrize("gain", [0.25, -0.25], ids=["faster", "slower"])
def test_search_tries_the_sum_tile_last_where_temps_l2_won(fake_kernels, gain):
    """With TEMPS_L2 in the best grouped config, that config timed once more with `SUM_DISCARD_TILE` as its "SUM",
    kept only where faster; never without TEMPS_L2."""
    seen, state = fake_kernels
    experts, inputs = tiny_inputs(T=200)
    state["cost"] = lambda cfg: (2.0 - 0.5 * cfg.get("TEMPS_L2", 0) - gain * ("SUM" in cfg)
                                 * cfg.get("TEMPS_L2", 0)) * (1 + (cfg.get("BLOCK_M") != 64))
    results = search.search_bucket(experts, inputs, configs.heuristic_config(200, 8, 128, 96, 2), wide=False, reps=1,
                                   log=print)
    cfgs = [json.loads(k) for _, k in results]
    sums = [c for c in cfgs if "SUM" in c]
    best_before = json.loads(min((ms, k) for ms, k in results if "SUM" not in k)[1])
    assert best_before.get("TEMPS_L2") == 1
    assert sums == [{**best_before, "SUM": search.SUM_DISCARD_TILE}]
    assert ("SUM" in cfgs[0]) == (gain > 0)


@pytest.mark.parametrize("T,other", [(1, 0), (3, 1)])
def test_search_tries_the_other_l2_policy_on_the_best_decode_config(fake_kernels, T, other):
    """The best decode config timed again with its weights' other L2 policy: 0 where T = 1 defaults to
    evict-first, 1 from T = 2 on; the search keeps the flip only where it is faster."""
    seen, state = fake_kernels
    experts, inputs = tiny_inputs(T=T)  # S = 2T pairs: the decode path competes
    target = search.decode_config(search.DECODE_UP[3], search.DECODE_DOWN[2])
    state["cost"] = lambda cfg: (5.0 if cfg.get("path") != "decode" else 2.0 - (cfg["up"] == target["up"])
                                 - 0.5 * (cfg["down"] == target["down"]) - 0.25 * (cfg.get("EVICT_FIRST") == other))
    results = search.search_bucket(experts, inputs, configs.heuristic_config(T, 8, 128, 96, 2), wide=False, reps=1,
                                   log=print)
    flipped = [json.loads(k) for _, k in results if "EVICT_FIRST" in k]
    assert flipped == [{**target, "EVICT_FIRST": other}]  # once, on the best decode config only
    assert results[0] == (0.25, json.dumps({**target, "EVICT_FIRST": other}, sort_keys=True))


@pytest.mark.parametrize("layout,one_dot", [({}, 0), ({"is_concatenated": False}, 1), ({"has_gate": False}, 0)])
def test_search_tries_tma_on_each_block_m_best(fake_kernels, layout, one_dot):
    from moe_lab import Experts, ExpertsLayout

    seen, state = fake_kernels
    experts = Experts(8, 128, 96, ExpertsLayout(**layout))
    inputs = (torch.randn(200, 128), torch.randint(0, 8, (200, 2)), torch.rand(200, 2))
    def cost(cfg):  # weights through TMA on both sides help, then the activations through TMA on both
        both_w = cfg["up"].get("TMA") and cfg["down"].get("TMA")
        both_a = cfg["up"].get("A_TMA") and cfg["down"].get("A_TMA")
        return (1.0 if both_w else 2.0) - (0.5 if both_a else 0.0)

    state["cost"] = cost
    incumbent = configs.heuristic_config(200, 8, 128, 96, 2)
    assert all("TMA" not in c["up"] and "TMA" not in c["down"] for c in search.candidates(400, 8))
    without = search.search_bucket(experts, inputs, incumbent, wide=False, reps=1, log=print)
    assert all("TMA" not in k for _, k in without)
    results = search.search_bucket(experts, inputs, incumbent, wide=False, reps=1, log=print, tma=True)
    best = json.loads(results[0][1])
    assert best["up"]["TMA"] == best["down"]["TMA"] == best["up"]["A_TMA"] == best["down"]["A_TMA"] == 1
    assert best["up"]["ONE_DOT"] == one_dot and results[0][0] == 0.5
    cfgs = [json.loads(k) for _, k in results if "HALF_TAIL" not in k]  # the half-tail stage: its own test
    weights_only = [c for c in cfgs if "TMA" in c["up"] or "TMA" in c["down"]]
    weights_only = [c for c in weights_only if "A_TMA" not in c["up"] and "A_TMA" not in c["down"]]
    with_a = [c for c in cfgs if "A_TMA" in c["up"] or "A_TMA" in c["down"]]
    n_bm = len(search.grouped_space(400, 8))
    assert len(weights_only) == 3 * n_bm  # gate/up, down, both: per BLOCK_M
    assert len(with_a) == 3 * n_bm and all(c["up"].get("TMA") and c["down"].get("TMA") for c in with_a)


def test_tma_variants_fit_block_k_to_the_reduction_size(fake_kernels):
    """gpt-oss has H = I = 2880: the best tiles' BLOCK_K 128/256 do not divide it, the TMA variants use 64."""
    from moe_lab import Experts

    seen, state = fake_kernels
    experts = Experts(8, 192, 96)  # H = 192 = 64 * 3, I = 96 = 32 * 3
    inputs = (torch.randn(200, 192), torch.randint(0, 8, (200, 2)), torch.rand(200, 2))
    results = search.search_bucket(experts, inputs, configs.heuristic_config(200, 8, 192, 96, 2), wide=False,
                                   reps=1, log=print, tma=True)
    tma_configs = [json.loads(k) for _, k in results if "TMA" in k]
    assert tma_configs
    for cfg in tma_configs:
        for side, k_size in (("up", 192), ("down", 96)):
            if cfg[side].get("TMA"):
                assert k_size % cfg[side]["BLOCK_K"] == 0
    assert any(c["up"].get("TMA") and c["up"]["BLOCK_K"] == 64 for c in tma_configs)  # 128 and 256 halved
    assert search._fit_block_k((64, 256, 8, 8, 3), 2880) == (64, 64, 8, 8, 3)
    assert search._fit_block_k((64, 128, 8, 8, 3), 2048) == (64, 128, 8, 8, 3)


@pytest.mark.parametrize("wide", [False, True])
def test_wide_searches_around_the_best_ws_entry_one_knob_at_a_time(fake_kernels, wide):
    """With `wide`, after the warp-specialized stages, each WS_KNOBS knob's settings are timed on the best entry
    so far: the search walks to the cheapest setting of each knob of a separable cost, passing over one that
    does not fit (down at 6 stages); without `wide` none of that runs."""
    seen, state = fake_kernels
    experts, inputs = tiny_inputs(T=200)
    target_down = search.WS_SPACE[1]["down"]

    def cost(cfg):
        ws = cfg.get("ws")
        if not ws:
            return 10.0
        if ws["down"]["STAGES"] == 6:
            return float("inf")
        return (2.0 - 0.5 * ws.get("HALF_TAIL", 0) - 0.25 * (ws["up"]["GROUP_M"] == 16)
                - 0.125 * (ws["up"]["STAGES"] == 5)
                - 0.5 * ({k: v for k, v in ws["down"].items() if k != "STAGES"} ==
                         {k: v for k, v in target_down.items() if k != "STAGES"})
                - 0.0625 * (ws["down"]["STAGES"] == 4))

    state["cost"] = cost
    incumbent = configs.heuristic_config(200, 8, 128, 96, 2)
    results = search.search_bucket(experts, inputs, incumbent, wide=wide, reps=1, log=print, ws=True, ws_only=True)
    best = json.loads(results[0][1])["ws"]
    if not wide:
        assert best["up"]["STAGES"] != 5 and all(json.loads(k).get("ws", {}).get("down", {}).get("STAGES") != 6
                                                 for _, k in results)
        return
    assert best["HALF_TAIL"] == 1 and best["up"]["GROUP_M"] == 16 and best["up"]["STAGES"] == 5
    assert {k: v for k, v in best["down"].items() if k != "STAGES"} == \
        {k: v for k, v in target_down.items() if k != "STAGES"} and best["down"]["STAGES"] == 4
    assert results[0][0] == 2.0 - 0.5 - 0.25 - 0.125 - 0.5 - 0.0625
    assert results[-1][0] == float("inf")  # down at 6 stages ran and failed
    assert len({k for _, k in results}) == len(results)


def test_a_ws_entry_that_does_not_apply_fails_where_they_run(fake_kernels, monkeypatch):
    """On a GPU that runs the warp-specialized GEMMs, an entry the plan turns down (it would run the config's
    Triton tiles instead) is logged as failed, not timed as if it ran."""
    import moe_lab.backends.triton_fused as tf
    from moe_lab.kernels import ops

    seen, state = fake_kernels
    experts, inputs = tiny_inputs(T=200)
    state["cost"] = lambda cfg: 1.0 if cfg.get("ws", {}).get("HALF_TAIL") else 2.0  # the refused ones look fastest
    monkeypatch.setattr(ops, "ws_available", lambda device: 132)
    monkeypatch.setattr(tf, "ran_warp_specialized", lambda experts, cfg: not cfg["ws"].get("HALF_TAIL"))
    lines = []
    results = search.search_bucket(experts, inputs, configs.heuristic_config(200, 8, 128, 96, 2), wide=True,
                                   reps=1, log=lines.append, ws=True, ws_only=True)
    assert "HALF_TAIL" not in json.loads(results[0][1]).get("ws", {}) and results[0][0] == 2.0
    refused = [ms for ms, k in results if json.loads(k).get("ws", {}).get("HALF_TAIL")]
    assert refused and all(ms == float("inf") for ms in refused)
    assert any("warp-specialized entry does not apply" in line for line in lines)


def test_search_keeps_the_incumbent_when_nothing_beats_it(fake_kernels):
    seen, state = fake_kernels
    experts, inputs = tiny_inputs(T=1)
    incumbent = configs.heuristic_config(1, 8, 128, 96, 2)
    state["cost"] = lambda cfg: 0.5 if cfg == incumbent else 2.0
    results = search.search_bucket(experts, inputs, incumbent, wide=False, reps=1, log=print)
    assert json.loads(results[0][1]) == incumbent


def test_search_logs_and_skips_configs_that_fail(fake_kernels):
    seen, state = fake_kernels
    experts, inputs = tiny_inputs(T=1)
    state["cost"] = lambda cfg: float("inf") if cfg["path"] == "decode" else 3.0
    lines = []
    results = search.search_bucket(experts, inputs, configs.heuristic_config(1, 8, 128, 96, 2), wide=False,
                                   reps=1, log=lines.append)
    assert json.loads(results[0][1])["path"] == "grouped"
    assert any("config failed" in line and "shared memory" in line for line in lines)
    assert results[-1][0] == float("inf")


def test_search_never_chooses_a_config_with_a_wrong_result(fake_kernels):
    seen, state = fake_kernels
    experts, inputs = tiny_inputs(T=1)
    state["cost"] = lambda cfg: 0.5 if cfg["path"] == "decode" else 2.0  # decode is fastest, but wrong by 1%
    state["wrong"] = lambda cfg: 1.01 if cfg["path"] == "decode" else 1.0
    lines = []
    results = search.search_bucket(experts, inputs, configs.heuristic_config(1, 8, 128, 96, 2), wide=False,
                                   reps=1, log=lines.append, expected_TH=inputs[0])
    assert json.loads(results[0][1])["path"] == "grouped" and results[0][0] == 2.0
    assert any("wrong result: relative error 1.00e-02" in line for line in lines)
    state["wrong"] = lambda cfg: 1.0 + 1e-6 if cfg["path"] == "decode" else 1.0  # float32 rounding: fine
    again = search.search_bucket(experts, inputs, configs.heuristic_config(1, 8, 128, 96, 2), wide=False,
                                 reps=1, log=lines.append, expected_TH=inputs[0])
    assert json.loads(again[0][1])["path"] == "decode" and again[0][0] == 0.5


def test_search_writes_rows_and_a_table_per_bucket(fake_kernels, tmp_path, monkeypatch):
    seen, state = fake_kernels
    monkeypatch.setattr(search, "precompile", lambda *a, **k: None)
    state["cost"] = lambda cfg: 1.0 if cfg["path"] == "decode" else 2.0
    table, rows = search.search(["tiny"], [1, 2], torch.float32, "cpu", reps=1, log=lambda m: None)
    by_bucket = table["cpu"]["float32"]["E8_H128_I96_K2"]
    assert set(by_bucket) == {"1", "2"} and all(c["path"] == "decode" for c in by_bucket.values())
    assert {r["tokens"] for r in rows} == {1, 2} and sum(r["chosen"] for r in rows) == 2
    search.write_rows(tmp_path / "c.csv", rows)
    assert (tmp_path / "c.csv").read_text().splitlines()[0] == "device,dtype,model,shape,tokens,ms,config,chosen"


def test_search_stops_at_its_budget(fake_kernels, monkeypatch):
    monkeypatch.setattr(search, "precompile", lambda *a, **k: None)
    lines = []
    table, rows = search.search(["tiny"], [1, 2], torch.float32, "cpu", budget_s=-1.0, reps=1, log=lines.append)
    assert table["cpu"]["float32"] == {} and rows == []
    assert any("T=1 and later not tuned" in line for line in lines)


def test_merge_keeps_other_entries(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"h100": {"bfloat16": {"A": {"1": {"x": 1}, "16": {"x": 2}}, "B": {"1": {"x": 3}}}}}))
    merged = search.merge_table(path, {"h100": {"bfloat16": {"A": {"16": {"x": 9}, "64": {"x": 4}}}},
                                       "cpu": {"float32": {"C": {"1": {"x": 5}}}}})
    assert merged == json.loads(path.read_text())
    assert merged["h100"]["bfloat16"] == {"A": {"1": {"x": 1}, "16": {"x": 9}, "64": {"x": 4}}, "B": {"1": {"x": 3}}}
    assert merged["cpu"]["float32"]["C"] == {"1": {"x": 5}}


def test_config_file_follows_the_environment(tmp_path, monkeypatch):
    cfg = search.decode_config((8, 256, 4), (8, 256, 4))
    path = tmp_path / "mine.json"
    search.merge_table(path, {"h100": {"bfloat16": {"E8_H128_I96_K2": {"1": cfg}}}})
    assert configs.config_path() == configs.CONFIG_FILE
    monkeypatch.setenv(configs.CONFIG_ENV, str(path))
    assert configs.config_path() == path
    assert configs.get_config("h100", "bfloat16", 3, 8, 128, 96, 2) == cfg
    monkeypatch.delenv(configs.CONFIG_ENV)
    assert configs.get_config("h100", "bfloat16", 3, 8, 128, 96, 2) != cfg  # the package's table again


def test_a_16_bit_float_without_entries_of_its_own_runs_the_other_ones_tiles():
    bf16_cfg, fp16_cfg, default_cfg = {"x": "bf16"}, {"x": "fp16"}, {"x": "default"}
    table = {"h100": {"bfloat16": {"E8_H128_I96_K2": {"1": bf16_cfg}, "default": {"1": default_cfg}}}}
    get = configs.get_config
    assert get("h100", "float16", 3, 8, 128, 96, 2, table=table) == bf16_cfg
    assert get("h100", "float16", 3, 8, 128, 64, 2, table=table) == default_cfg  # no tuned shape: the default
    assert get("h100", "float32", 3, 8, 128, 96, 2, table=table) == configs.heuristic_config(3, 8, 128, 96, 2)
    table["h100"]["float16"] = {"E8_H128_I96_K2": {"1": fp16_cfg}}
    assert get("h100", "float16", 3, 8, 128, 96, 2, table=table) == fp16_cfg  # its own entry first
    assert get("h100", "bfloat16", 3, 8, 128, 96, 2, table=table) == bf16_cfg


def test_the_package_table_gives_float16_the_bfloat16_tiles_of_every_tuned_shape():
    by_shape = configs.load_table(configs.CONFIG_FILE)["h100"]["bfloat16"]
    for key, by_bucket in by_shape.items():
        E, H, I, K = (int(part[1:]) for part in key.split("_"))
        for bucket, cfg in by_bucket.items():
            assert configs.get_config("h100", "float16", int(bucket), E, H, I, K) == cfg


def test_cli_refuses_where_the_kernels_cannot_run(monkeypatch, capsys):
    from moe_lab.cli import main

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert main(["tune-kernels", "--models", "tiny", "--device", "cpu"]) == 2
    assert "TRITON_INTERPRET=1" in capsys.readouterr().out
    if not torch.cuda.is_available():
        assert main(["tune-kernels", "--models", "tiny"]) == 2
        assert "no CUDA device" in capsys.readouterr().out


def test_cli_merges_into_a_new_file_that_starts_as_the_table_in_force(tmp_path, monkeypatch, capsys):
    from moe_lab.cli import main

    cfg = search.decode_config((8, 256, 4), (8, 256, 4))
    found = {"cpu": {"float32": {"E8_H128_I96_K2": {"1": cfg}}}}
    rows = [dict(device="cpu", dtype="float32", model="tiny", shape="E8_H128_I96_K2", tokens=1, ms=0.5,
                 config=json.dumps(cfg, sort_keys=True), chosen=1)]
    calls = []
    monkeypatch.setattr(search, "search", lambda *a, **k: calls.append((a, k)) or (found, rows))
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the CLI's gate for a CPU device; the search itself is stubbed
    out, cands = tmp_path / "mine.json", tmp_path / "c.csv"
    assert main(["tune-kernels", "--models", "tiny", "--tokens", "1", "--device", "cpu", "--dtype", "float32",
                 "--out", str(out), "--candidates", str(cands), "--no-tma"]) == 0
    assert calls[0][0][:4] == (["tiny"], [1], torch.float32, "cpu") and calls[0][1]["tma"] is False
    written = json.loads(out.read_text())
    package = json.loads(configs.CONFIG_FILE.read_text())
    assert written["cpu"]["float32"]["E8_H128_I96_K2"] == {"1": cfg}
    assert {k: v for k, v in written.items() if k != "cpu"} == package  # the table in force, kept whole
    assert len(cands.read_text().splitlines()) == 2 and "merged 1 bucket(s)" in capsys.readouterr().out


def test_cli_starts_from_the_package_table_when_the_named_file_is_missing(tmp_path, monkeypatch):
    """MOE_LAB_KERNEL_CONFIGS naming the --out file before it exists: the search starts from the package's table
    (its incumbents), not from nothing."""
    from moe_lab.cli import main

    out = tmp_path / "new.json"
    monkeypatch.setenv(configs.CONFIG_ENV, str(out))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    seen = []

    def fake_search(*a, **k):
        seen.append(configs.load_table())
        return {}, []

    monkeypatch.setattr(search, "search", fake_search)
    assert main(["tune-kernels", "--models", "tiny", "--tokens", "1", "--device", "cpu", "--out", str(out)]) == 0
    package = json.loads(configs.CONFIG_FILE.read_text())
    assert seen == [package] and json.loads(out.read_text()) == package


def test_gate_up_tiles_are_compared_beside_a_down_tile_that_runs(fake_kernels):
    """The first down tile of a BLOCK_M does not fit in shared memory: the gate/up tiles must still be compared
    (beside the next down tile), not all fail alike and leave the first one the winner."""
    seen, state = fake_kernels
    experts, inputs = tiny_inputs(T=200)
    space = search.grouped_space(400, 8)
    bm = 64
    ups, downs = space[bm]
    fast_up = ups[-1]

    def cost(cfg):
        if cfg.get("BLOCK_M") != bm:
            return 5.0
        if cfg["down"] == dict(zip(search.TILE_KEYS, downs[0])):
            raise RuntimeError("out of resource: shared memory")
        return 1.0 if cfg["up"] == {**dict(zip(search.TILE_KEYS, fast_up[:5])), "ONE_DOT": fast_up[5]} else 2.0

    state["cost"] = cost
    results = search.search_bucket(experts, inputs, configs.heuristic_config(200, 8, 128, 96, 2), wide=False,
                                   reps=1, log=print)
    best = json.loads(results[0][1])
    assert results[0][0] == 1.0 and best["BLOCK_M"] == bm and best["up"]["ONE_DOT"] == fast_up[5]
    assert [best["up"][k] for k in search.TILE_KEYS] == list(fast_up[:5])


@pytest.mark.parametrize("config,T,evicts", [({}, 1, True), ({}, 2, False), ({}, 64, False),
                                             ({"EVICT_FIRST": 0}, 1, False), ({"EVICT_FIRST": 1}, 8, True)])
def test_decode_weights_evict_first_where_none_is_read_twice_unless_the_config_says(config, T, evicts):
    assert configs.decode_evicts_first(config, T) is evicts

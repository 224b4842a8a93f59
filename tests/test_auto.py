"""`auto`: the dispatch table's loading and lookup, its documented defaults, and `moe-lab tune` on CPU."""

from __future__ import annotations

import csv

import pytest
import torch

from moe_lab import BACKENDS, build_experts, reference_experts, relative_error, synthetic_routing
from moe_lab.backends import auto
from moe_lab.backends.auto import choose_backend, default_backend, layout_tag, load_dispatch_table

COLUMNS = ["device", "dtype", "E", "H", "I", "K", "layout", "tokens", "backend", "ms", "chosen"]
TINY = dict(device="cpu", dtype="float32", E=8, H=128, I=96, K=2, layout="default")  # data/model_shapes.yaml


def write_table(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({**TINY, "ms": 1.0, "chosen": 1, **r})
    return path


@pytest.fixture
def table_env(tmp_path, monkeypatch):
    """Point auto at a table file in tmp_path (absent until a test writes it)."""
    path = tmp_path / "auto_dispatch.csv"
    monkeypatch.setenv("MOE_LAB_DISPATCH_TABLE", str(path))
    auto.reload_dispatch_table()
    yield path
    auto.reload_dispatch_table()


def call_inputs(T, seed=0):
    ids_TK, w_TK = synthetic_routing("uniform", T, 8, 2, seed=seed)
    return torch.randn(T, 128, generator=torch.Generator().manual_seed(seed)), ids_TK, w_TK


def test_auto_is_registered():
    assert BACKENDS["auto"] is auto.auto_experts


def test_default_without_table_is_grouped_mm_on_cpu(table_env):
    experts = build_experts("tiny")
    x_TH, ids_TK, _ = call_inputs(5)
    assert not table_env.exists()
    assert choose_backend(experts, x_TH, ids_TK) == "grouped_mm"


def test_default_on_cuda_refused_layout_is_grouped_mm():
    class CustomGate(torch.nn.Module):
        has_gate, has_bias, is_transposed, is_concatenated = True, False, False, True
        act_fn = torch.nn.SiLU()

        def _apply_gate(self, h):
            return h

    assert default_backend(CustomGate(), torch.device("cuda")) == "grouped_mm"


def test_buckets_pick_largest_at_or_below(table_env):
    write_table(table_env, [dict(tokens=4, backend="batched_mm"), dict(tokens=16, backend="eager"),
                            dict(tokens=64, backend="grouped_mm"),
                            dict(tokens=16, backend="batched_mm", chosen=0)])  # an unchosen row: ignored
    experts = build_experts("tiny")
    want = {1: "batched_mm", 4: "batched_mm", 15: "batched_mm", 16: "eager", 63: "eager", 64: "grouped_mm",
            5000: "grouped_mm"}
    for T, name in want.items():
        x_TH, ids_TK, _ = call_inputs(T)
        assert choose_backend(experts, x_TH, ids_TK) == name, T


def test_other_keys_fall_back_to_the_default(table_env):
    write_table(table_env, [dict(tokens=1, backend="eager")])
    x_TH, ids_TK, _ = call_inputs(3)
    assert choose_backend(build_experts("tiny"), x_TH, ids_TK) == "eager"
    assert choose_backend(build_experts("tiny", dtype=torch.float64), x_TH.double(), ids_TK) == "grouped_mm"
    from moe_lab import Experts, ExpertsLayout

    transposed = Experts(8, 128, 96, ExpertsLayout(is_transposed=True))
    assert layout_tag(transposed) == "transposed"
    assert choose_backend(transposed, x_TH, ids_TK) == "grouped_mm"


@pytest.mark.parametrize("model", ["qwen1.5-moe-a2.7b", "gpt-oss-20b", "olmoe-1b-7b"])
def test_transformers_module_has_the_tag_of_moe_labs(model):
    """`moe-lab tune` measures moe_lab's Experts; auto is called on the family's own transformers module, so
    both must key the same table rows (gpt-oss' clamped swiglu once missed, and auto ran grouped_mm)."""
    from moe_lab.shapes import build_config, hf_experts_class

    config = build_config(model)
    with torch.device("meta"):
        hf_module = hf_experts_class(config)(config)
    ours = build_experts(model, device="meta")
    assert layout_tag(hf_module) == layout_tag(ours)
    assert (layout_tag(ours) == "interleaved+transposed+bias+clamped_swiglu") == (model == "gpt-oss-20b")


def test_unknown_backend_in_table_is_an_error(table_env):
    write_table(table_env, [dict(tokens=1, backend="no_such_backend")])
    with pytest.raises(ValueError, match="no_such_backend"):
        load_dispatch_table(str(table_env))


def test_auto_runs_the_chosen_backend_and_matches_reference(table_env):
    write_table(table_env, [dict(tokens=1, backend="eager"), dict(tokens=8, backend="batched_mm")])
    experts = build_experts("tiny")
    for T in (3, 20):
        x_TH, ids_TK, w_TK = call_inputs(T, seed=T)
        out = auto.auto_experts(experts, x_TH, ids_TK, w_TK)
        want = BACKENDS["eager" if T < 8 else "batched_mm"](experts, x_TH, ids_TK, w_TK)
        torch.testing.assert_close(out, want)
        assert relative_error(out, reference_experts(experts, x_TH, ids_TK, w_TK)) < 1e-4


def test_remembered_choice_follows_a_reloaded_table(table_env):
    experts = build_experts("tiny")
    x_TH, ids_TK, w_TK = call_inputs(4)
    write_table(table_env, [dict(tokens=1, backend="eager")])
    auto.reload_dispatch_table()
    auto.auto_experts(experts, x_TH, ids_TK, w_TK)
    assert auto._CHOICES[experts][next(iter(auto._CHOICES[experts]))] is BACKENDS["eager"]
    write_table(table_env, [dict(tokens=1, backend="batched_mm")])
    auto.reload_dispatch_table()
    auto.auto_experts(experts, x_TH, ids_TK, w_TK)
    assert BACKENDS["batched_mm"] in auto._CHOICES[experts].values()


def test_tune_writes_a_table_auto_follows(table_env):
    from moe_lab.tune import tune

    write_table(table_env, [dict(dtype="bfloat16", tokens=1, backend="eager")])  # another key: kept
    rows = tune(["tiny"], [1, 8], torch.float32, "cpu", ["grouped_mm", "eager"], reps=1, log=lambda m: None)
    assert {(r["tokens"], r["backend"]) for r in rows} == {(1, "grouped_mm"), (1, "eager"), (8, "grouped_mm"),
                                                           (8, "eager")}
    with open(table_env) as f:
        written = list(csv.DictReader(f))
    assert any(r["dtype"] == "bfloat16" for r in written)
    for T in (1, 8):
        chosen = [r for r in rows if r["tokens"] == T and r["chosen"]]
        assert len(chosen) == 1
        assert chosen[0]["ms"] == min(r["ms"] for r in rows if r["tokens"] == T)
        x_TH, ids_TK, _ = call_inputs(T)
        assert choose_backend(build_experts("tiny"), x_TH, ids_TK) == chosen[0]["backend"]


def test_committed_table_names_known_backends():
    table = load_dispatch_table(str(auto.DEFAULT_TABLE))
    for rows in table.values():
        assert all(name in auto.CANDIDATES for _, name in rows)


def test_forward_only_choice_gives_way_to_grouped_mm_when_gradients_are_needed(table_env, monkeypatch, caplog):
    forward_only = auto.CANDIDATES["eager"]
    monkeypatch.setattr(forward_only, "differentiable", False, raising=False)
    write_table(table_env, [dict(tokens=1, backend="eager")])
    experts = build_experts("tiny")
    x_TH, ids_TK, w_TK = call_inputs(5)
    with torch.no_grad():  # inference: the table's choice runs
        auto.auto_experts(experts, x_TH, ids_TK, w_TK)
    assert forward_only in auto._CHOICES[experts].values()
    x_TH.requires_grad_(True)
    with caplog.at_level("WARNING", logger="moe_lab"):
        out = auto.auto_experts(experts, x_TH, ids_TK, w_TK)
    out.sum().backward()
    assert x_TH.grad is not None and experts.down_proj.grad is not None
    assert BACKENDS["grouped_mm"] in auto._CHOICES[experts].values()


def test_default_on_cuda_transposed_layout_is_grouped_mm():
    """gpt-oss's transposed layout: untuned triton_fused measured slow there, so the default is grouped_mm."""
    experts = build_experts("gpt-oss-20b", device="meta")
    assert default_backend(experts, torch.device("cuda")) == "grouped_mm"


def test_timer_refuses_an_unknown_l2_flush():
    from moe_lab.tune import median_ms

    with pytest.raises(ValueError, match="flush must be 'write' or 'read'"):
        median_ms(lambda: None, torch.device("cpu"), reps=1, flush="none")

"""Real model shapes (data/model_shapes.yaml): their numbers, their configs, their experts and whole models.

Big shapes are built only as configs or on the meta device. Legend: H hidden, I expert intermediate,
E experts, K top-k.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from moe_lab import build_config, build_experts, build_model, get_shape, model_shapes
from moe_lab.shapes import build_hf_experts, hf_experts_class

REFERENCE_DOC = Path(__file__).resolve().parents[2] / "shared" / "reference" / "model_shapes.md"

# From ../shared/reference/model_shapes.md (the models' published config.json), so that CI checks the yaml
# even where that file is not checked out: hf id, H, I, E, K, layers, and config attributes from its notes.
EXPECTED = {
    "qwen1.5-moe-a2.7b": ("Qwen/Qwen1.5-MoE-A2.7B", 2048, 1408, 60, 4, 24, dict(
        num_attention_heads=16, num_key_value_heads=16, vocab_size=151936, norm_topk_prob=False,
        shared_expert_intermediate_size=5632)),
    "qwen3-30b-a3b": ("Qwen/Qwen3-30B-A3B", 2048, 768, 128, 8, 48, dict(
        num_attention_heads=32, num_key_value_heads=4, head_dim=128, norm_topk_prob=True)),
    "olmoe-1b-7b": ("allenai/OLMoE-1B-7B-0924", 2048, 1024, 64, 8, 16, dict(
        num_attention_heads=16, num_key_value_heads=16, vocab_size=50304)),
    "deepseek-v2-lite": ("deepseek-ai/DeepSeek-V2-Lite", 2048, 1408, 64, 6, 27, dict(
        first_k_dense_replace=1, intermediate_size=10944, n_shared_experts=2, kv_lora_rank=512, vocab_size=102400)),
    "gpt-oss-20b": ("openai/gpt-oss-20b", 2880, 2880, 32, 4, 24, dict(swiglu_limit=7.0)),
    "mixtral-8x7b": ("mistralai/Mixtral-8x7B-v0.1", 4096, 14336, 8, 2, 32, dict(
        num_attention_heads=32, num_key_value_heads=8, vocab_size=32000)),
}
# Total parameters of the whole model, from the model cards; the meta-device build must land within 1%.
PUBLISHED_PARAMS = {"qwen1.5-moe-a2.7b": 14.3e9, "qwen3-30b-a3b": 30.5e9, "olmoe-1b-7b": 6.92e9,
                    "deepseek-v2-lite": 15.7e9, "gpt-oss-20b": 20.9e9, "mixtral-8x7b": 46.7e9}
ALL = list(model_shapes())


def hf_experts_dims(experts) -> tuple[int, int, int]:
    """(E, H, I) of a transformers experts module, read from its down projection."""
    E, a, b = experts.down_proj.shape
    return (E, b, a) if experts.is_transposed else (E, a, b)


def test_every_shape_the_issue_names():
    assert set(EXPECTED) | {"tiny"} <= set(model_shapes())


@pytest.mark.parametrize("name", list(EXPECTED))
def test_numbers_are_the_published_ones(name):
    hf_id, H, I, E, K, layers, _ = EXPECTED[name]  # noqa: E741
    shape = get_shape(name)
    assert (shape.hf_id, shape.hidden, shape.intermediate, shape.experts, shape.top_k, shape.layers) == \
        (hf_id, H, I, E, K, layers)


def parse_reference_doc(text: str) -> dict[str, dict]:
    """hf id -> the numbers of its row in model_shapes.md (first integer of each numeric cell) and its notes."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 8 or "/" not in cells[0] or cells[0].startswith("model"):
            continue
        first_int = [int(re.match(r"\d+", c).group()) for c in cells[1:6]]
        rows[cells[0]] = dict(zip(("hidden", "intermediate", "experts", "top_k", "layers"), first_int),
                              shared=cells[6], notes=cells[7])
    return rows


def test_reference_doc_agrees():
    if not REFERENCE_DOC.exists():
        pytest.skip(f"{REFERENCE_DOC} is not checked out here; EXPECTED carries its numbers")
    rows = parse_reference_doc(REFERENCE_DOC.read_text())
    assert {v[0] for v in EXPECTED.values()} == set(rows), "a model was added to or dropped from the reference"
    for name, (hf_id, H, I, E, K, layers, attrs) in EXPECTED.items():  # noqa: E741
        row = rows[hf_id]
        assert (row["hidden"], row["intermediate"], row["experts"], row["top_k"], row["layers"]) == (H, I, E, K, layers)
        notes = row["notes"] + " " + row["shared"]
        if m := re.search(r"heads (\d+)/(\d+)", notes):
            assert (attrs["num_attention_heads"], attrs["num_key_value_heads"]) == tuple(map(int, m.groups()))
        for key, pattern in (("vocab_size", r"vocab (\d+)"), ("head_dim", r"head_dim (\d+)"),
                             ("kv_lora_rank", r"kv_lora_rank (\d+)")):
            if m := re.search(pattern, notes):
                assert attrs[key] == int(m.group(1)), (hf_id, key)
        if m := re.search(r"norm_topk_prob (true|false)", notes):
            assert attrs["norm_topk_prob"] == (m.group(1) == "true")
        if m := re.search(r"limit ([\d.]+)", notes):
            assert attrs["swiglu_limit"] == float(m.group(1))


@pytest.mark.parametrize("name", list(EXPECTED))
def test_config_carries_the_numbers(name):
    *_, attrs = EXPECTED[name]
    config = build_config(name)
    for key, value in attrs.items():
        assert getattr(config, key) == value, f"{name}: {key}"


@pytest.mark.parametrize("name", ALL)
def test_config_builds_the_shapes_experts(name):
    """The yaml's config, through its family's experts class (on meta), has the yaml's E, H, I, K and layers."""
    shape = get_shape(name)
    config = build_config(name)
    assert type(config).__name__ == shape.config_class
    assert config.num_hidden_layers == shape.layers
    assert config.num_experts_per_tok == shape.top_k
    experts = build_hf_experts(name, device="meta", dtype=torch.bfloat16)
    assert type(experts) is hf_experts_class(config)
    assert hf_experts_dims(experts) == (shape.experts, shape.hidden, shape.intermediate)
    assert experts.down_proj.dtype == torch.bfloat16 and experts.down_proj.is_meta
    for flag in ("has_gate", "is_concatenated", "is_transposed", "has_bias"):
        assert getattr(experts, flag) == getattr(shape.layout, flag), f"{name}: {flag}"


@pytest.mark.parametrize("name", ALL)
def test_build_experts_on_meta(name):
    shape = get_shape(name)
    experts = build_experts(name, device="meta", dtype=torch.bfloat16)
    E, H, I = shape.experts, shape.hidden, shape.intermediate  # noqa: E741
    N = 2 * I if shape.layout.has_gate else I
    up = experts.gate_up_proj if shape.layout.has_gate else experts.up_proj
    assert up.shape == ((E, H, N) if shape.layout.is_transposed else (E, N, H))
    assert experts.down_proj.shape == ((E, I, H) if shape.layout.is_transposed else (E, H, I))
    assert all(p.is_meta and p.dtype == torch.bfloat16 for p in experts.parameters())
    assert hasattr(experts, "down_proj_bias") == shape.layout.has_bias
    assert experts.layout == shape.layout


def test_build_experts_tiny():
    shape = get_shape("tiny")
    a = build_experts("tiny", seed=1)
    b = build_experts("tiny", seed=1)
    c = build_experts("tiny", seed=2, dtype=torch.bfloat16, backend="grouped_mm")
    assert a.down_proj.shape == (shape.experts, shape.hidden, shape.intermediate)
    assert torch.equal(a.down_proj, b.down_proj) and torch.equal(a.gate_up_proj, b.gate_up_proj)
    assert not torch.equal(a.down_proj, c.down_proj.float())
    assert c.down_proj.dtype == torch.bfloat16 and c.backend == "grouped_mm"
    assert a.down_proj.device.type == "cpu" and a.down_proj.std() > 0


def test_build_hf_experts_tiny():
    shape = get_shape("tiny")
    experts = build_hf_experts("tiny", seed=4)
    assert type(experts).__name__ == "Qwen2MoeExperts"
    assert hf_experts_dims(experts) == (shape.experts, shape.hidden, shape.intermediate)
    assert torch.equal(experts.down_proj, build_hf_experts("tiny", seed=4).down_proj)
    assert experts.down_proj.std() > 0 and not experts.training


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("num_layers", [1, 2])
def test_build_config_cuts_layers(name, num_layers):
    full = build_config(name)
    cut = build_config(name, num_layers=num_layers, experts_implementation="grouped_mm")
    assert cut.num_hidden_layers == num_layers
    if getattr(full, "layer_types", None) is not None:
        assert list(cut.layer_types) == list(full.layer_types[:num_layers])
    assert cut._experts_implementation == "grouped_mm"
    assert cut.hidden_size == full.hidden_size and cut.vocab_size == full.vocab_size


@pytest.mark.parametrize("name", list(EXPECTED))
def test_whole_model_on_meta(name):
    """The whole model from its config class: the published size, and cut to 2 layers, an MoE layer or more."""
    model = build_model(name, device="meta", dtype=torch.bfloat16)
    n_params = sum(p.numel() for p in model.parameters())
    assert abs(n_params / PUBLISHED_PARAMS[name] - 1) < 0.01, f"{name}: {n_params / 1e9:.2f}B parameters"
    cut = build_model(name, num_layers=2, device="meta")
    assert cut.config.num_hidden_layers == len(cut.model.layers) == 2
    experts_cls = hf_experts_class(cut.config)
    assert any(isinstance(m, experts_cls) for m in cut.modules())


def test_whole_tiny_model_runs():
    model = build_model("tiny")
    assert type(model).__name__ == "Qwen2MoeForCausalLM" and len(model.model.layers) == 2 and not model.training
    one = build_model("tiny", num_layers=1)
    assert len(one.model.layers) == 1
    input_ids = torch.randint(0, 512, (2, 5), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(input_ids).logits
        assert logits.shape == (2, 5, 512) and torch.isfinite(logits).all()
        same = build_model("tiny", experts_implementation="moe_lab_grouped_mm")  # same seed, same weights
        assert same.config._experts_implementation == "moe_lab_grouped_mm"
        torch.testing.assert_close(same(input_ids).logits, logits, rtol=1e-4, atol=1e-5)
        half = build_model("tiny", dtype=torch.bfloat16)
        assert half.lm_head.weight.dtype == torch.bfloat16

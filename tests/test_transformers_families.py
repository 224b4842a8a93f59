"""transformers integration: moe_lab's backends, registered in `ExpertsInterface`, reproduce the eager forward
of every MoE family whose experts class uses `@use_experts_implementation`, found by scanning transformers.

Per family: a tiny config made generically from the family's own config class, the experts class built
directly with seeded weights, then `moe_lab_<backend>` against the family's eager forward. For the main
families also the whole causal LM: `from_config(..., experts_implementation=...)` and
`set_experts_implementation(...)`. Legend: T tokens, H hidden, I intermediate, E experts, K top-k.
"""

from __future__ import annotations

import copy
import functools
import importlib
import inspect
import pathlib

import pytest
import torch
import transformers
from transformers import AutoModelForCausalLM, PretrainedConfig
from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

import moe_lab
from moe_lab import (BACKENDS, Experts, reference_experts, register_with_transformers, relative_error,
                     synthetic_routing)
from moe_lab.shapes import build_config, get_shape, hf_experts_class, init_expert_weights_, model_shapes

# experts-only sizes: H and I are not multiples of 8 (grouped_mm pads), E leaves experts without tokens
EXPERTS_SIZES = dict(hidden=22, intermediate=14, experts=8, top_k=2, latent=12)
# whole-model sizes: attention needs heads * head_dim to make sense and an even rotary head_dim
MODEL_SIZES = dict(hidden=32, intermediate=24, experts=6, top_k=2, latent=16)
T = 11  # tokens per experts call

# The families the issue names: they must be discovered and pass, never skipped.
MAIN_FAMILIES = ["qwen2_moe", "qwen3_moe", "mixtral", "olmoe", "deepseek_v3", "gpt_oss", "granitemoe"]
# family -> why its experts class cannot be built from a generic tiny config (an xfail that names the reason).
NOT_GENERIC: dict[str, str] = {}


# --- discovery --------------------------------------------------------------------------------------------------

def is_moe_experts_class(obj, module) -> bool:
    """A class of `module` whose __init__ is the one `use_experts_implementation` installs."""
    init_code = getattr(getattr(obj, "__init__", None), "__code__", None)
    return (isinstance(obj, type) and issubclass(obj, torch.nn.Module) and obj.__module__ == module.__name__
            and init_code is not None and init_code.co_filename.endswith("integrations/moe.py"))


@functools.cache
def discover_families() -> tuple[tuple[str, str], ...]:
    """(model family, experts class name) for every class decorated with @use_experts_implementation."""
    root = pathlib.Path(transformers.__file__).parent / "models"
    found = []
    for path in sorted(root.glob("*/modeling_*.py")):
        if "@use_experts_implementation" not in path.read_text():  # cheap pre-filter before importing
            continue
        module = importlib.import_module(f"transformers.models.{path.parent.name}.{path.stem}")
        found += [(path.parent.name, name) for name, obj in sorted(vars(module).items())
                  if is_moe_experts_class(obj, module)]
    return tuple(found)


def experts_class(family: str, class_name: str) -> type[torch.nn.Module]:
    return getattr(importlib.import_module(f"transformers.models.{family}.modeling_{family}"), class_name)


# --- tiny configs, generically ------------------------------------------------------------------------------------

EXPERT_COUNTS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts", "num_routed_experts")
TOP_KS = ("num_experts_per_tok", "moe_topk", "moe_k", "top_k", "top_k_experts", "num_experts_per_token")


def tiny_overrides(values: dict, sizes: dict) -> dict:
    """For every size-like attribute in `values` (a config's to_dict()), its tiny value."""
    H, I, E, K = sizes["hidden"], sizes["intermediate"], sizes["experts"], sizes["top_k"]  # noqa: E741
    small = {}
    for key, value in values.items():
        is_int = isinstance(value, int) and not isinstance(value, bool)
        if key.endswith("hidden_size") and is_int:
            small[key] = H
        elif "intermediate_size" in key and (is_int or value is None):
            small[key] = I
        elif "intermediate_size" in key and isinstance(value, list):  # per-modality sizes (ERNIE-VL)
            small[key] = [I] * len(value)
        elif key.endswith("latent_size") and is_int:
            small[key] = sizes["latent"]
        elif key in EXPERT_COUNTS and (is_int or value is None):
            small[key] = E
        elif key in TOP_KS and (is_int or value is None):
            small[key] = K
        elif key in ("n_group", "topk_group", "first_k_dense_replace") and is_int:
            small[key] = 1
        elif key == "num_hidden_layers" and is_int:
            small[key] = 2
        elif key == "num_attention_heads" and is_int:
            small[key] = 4
        elif key == "num_key_value_heads" and is_int:
            small[key] = 4  # = heads: multi-head latent attention (DeepSeek) projects keys for every head
        elif key.endswith("head_dim") and is_int:  # head_dim, qk_nope_head_dim, qk_rope_head_dim, v_head_dim
            small[key] = 8
        elif key in ("kv_lora_rank", "q_lora_rank") and is_int:
            small[key] = 16
        elif key == "vocab_size" and is_int:
            small[key] = 128
        elif key == "swiglu_limit" and isinstance(value, (int, float)) and not isinstance(value, bool):
            small[key] = 0.5  # low enough that the clamps of clamped SwiGLU gates bite on these inputs
    return small


def tiny_config(config_class: type[PretrainedConfig], sizes: dict) -> PretrainedConfig:
    """The config class's defaults with every size shrunk: through the constructor where it accepts that,
    else set on the built config (enough for an experts module on its own)."""
    small = tiny_overrides(config_class().to_dict(), sizes)
    try:
        config = config_class(**small)
    except Exception:  # noqa: BLE001 - a validator that wants consistent sizes: set them afterwards instead
        config = config_class()
    for key, value in small.items():
        setattr(config, key, value)
    return config


def config_candidates(cls: type[torch.nn.Module], family: str) -> list[type[PretrainedConfig]]:
    """The config classes an experts class may take: its annotated one and that one's sub-configs first, then the
    family's others, those whose name shares the longest prefix with the experts class first."""
    module = importlib.import_module(f"transformers.models.{family}.configuration_{family}")
    in_module = [c for c in vars(module).values()
                 if isinstance(c, type) and issubclass(c, PretrainedConfig) and c.__module__ == module.__name__]
    stem = cls.__name__.removesuffix("Experts")

    def prefix(c):
        name = c.__name__.removesuffix("Config")
        return next((i for i, (a, b) in enumerate(zip(name, stem)) if a != b), min(len(name), len(stem)))

    annotated = inspect.signature(cls.__init__.__wrapped__).parameters["config"].annotation
    first = [annotated] if isinstance(annotated, type) and issubclass(annotated, PretrainedConfig) else []
    first += [sub for c in first for sub in getattr(c, "sub_configs", {}).values() if isinstance(sub, type)]
    rest = sorted(in_module, key=lambda c: (-prefix(c), "Text" not in c.__name__, c.__name__))
    return list(dict.fromkeys(first + rest))


def extra_init_args(cls, sizes: dict) -> dict:
    """Size arguments an experts __init__ takes beside the config (ERNIE-VL's `intermediate_size`)."""
    params = inspect.signature(cls.__init__.__wrapped__).parameters
    return {"intermediate_size": sizes["intermediate"]} if "intermediate_size" in params else {}


def build_tiny_experts(family: str, class_name: str, sizes: dict = EXPERTS_SIZES, seed: int = 0):
    """The family's experts module, tiny, with seeded weights, eval mode; raises naming every config it tried."""
    cls = experts_class(family, class_name)
    tried = []
    for config_class in config_candidates(cls, family):
        try:
            config = tiny_config(config_class, sizes)
            with torch.device("meta"):  # never allocate a module whose sizes did not shrink
                probe = cls(config, **extra_init_args(cls, sizes))
            n_params = sum(p.numel() for p in probe.parameters())
            if n_params > 100_000:
                raise ValueError(f"{n_params} parameters: sizes did not shrink")
        except Exception as e:  # noqa: BLE001 - try the next candidate, remember why this one failed
            tried.append(f"{config_class.__name__}: {type(e).__name__}: {e}")
            continue
        config._experts_implementation = "eager"
        experts = cls(config, **extra_init_args(cls, sizes))
        return init_expert_weights_(experts, seed).eval()
    raise RuntimeError(f"no generic tiny config builds {class_name}: " + " | ".join(tried))


@functools.cache
def cached_experts(family: str, class_name: str) -> torch.nn.Module:
    return build_tiny_experts(family, class_name)


def routed_inputs(experts: torch.nn.Module, seed: int = 0, dtype=torch.float32):
    E = experts.down_proj.shape[0]
    H = experts.down_proj.shape[2] if experts.is_transposed else experts.down_proj.shape[1]
    ids_TK, weights_TK = synthetic_routing("skewed", T, E, min(EXPERTS_SIZES["top_k"], E), seed=seed)
    x_TH = torch.randn(T, H, generator=torch.Generator().manual_seed(seed)).to(dtype)
    return x_TH, ids_TK, weights_TK.to(dtype)


def forward_with(experts: torch.nn.Module, implementation: str, *inputs) -> torch.Tensor:
    experts.config._experts_implementation = implementation
    try:
        with torch.no_grad():
            return experts(*inputs)
    finally:
        experts.config._experts_implementation = "eager"


def family_params():
    params = []
    for family, class_name in discover_families():
        marks = [pytest.mark.xfail(reason=NOT_GENERIC[family], strict=True)] if family in NOT_GENERIC else []
        params.append(pytest.param(family, class_name, id=f"{family}.{class_name}", marks=marks))
    return params


@pytest.fixture(scope="module", autouse=True)
def registered():
    return register_with_transformers()


# --- tests --------------------------------------------------------------------------------------------------------

def test_register_returns_the_names(registered):
    assert registered == [f"moe_lab_{name}" for name in BACKENDS]
    for name in registered:
        assert name in ALL_EXPERTS_FUNCTIONS
        assert ALL_EXPERTS_FUNCTIONS[name] is BACKENDS[name.removeprefix("moe_lab_")]
    assert register_with_transformers() == registered  # idempotent


def test_discovery_finds_the_families():
    families = {family for family, _ in discover_families()}
    assert len(discover_families()) >= 60, discover_families()
    assert set(MAIN_FAMILIES) <= families
    assert not set(MAIN_FAMILIES) & set(NOT_GENERIC)
    assert set(NOT_GENERIC) <= families, "a listed family no longer exists: drop it from NOT_GENERIC"
    with_causal_lm = 0
    for family, _ in discover_families():  # moe_lab.shapes.hf_experts_class finds a discovered class
        config_class = transformers.CONFIG_MAPPING[family] if family in transformers.CONFIG_MAPPING else None
        if config_class in AutoModelForCausalLM._model_mapping:
            assert (family, hf_experts_class(config_class()).__name__) in discover_families()
            with_causal_lm += 1
    assert with_causal_lm >= 40


@pytest.mark.parametrize(("family", "class_name"), family_params())
def test_family_matches_its_eager_forward(backend, family, class_name, rtol):
    experts = cached_experts(family, class_name)
    inputs = routed_inputs(experts)
    want_TH = forward_with(experts, "eager", *inputs)
    got_TH = forward_with(experts, f"moe_lab_{backend}", *inputs)
    assert got_TH.shape == want_TH.shape and got_TH.dtype == want_TH.dtype
    err = relative_error(got_TH, want_TH)
    assert err <= rtol[torch.float32], f"{class_name} with moe_lab_{backend}: relative error {err:.3g}"


@pytest.mark.parametrize(("family", "class_name"), family_params())
def test_family_eager_is_the_reference(family, class_name, rtol):
    """moe_lab's float64 reference reads every family's layout (so the layout flags mean what moe_lab thinks)."""
    experts = cached_experts(family, class_name)
    inputs = routed_inputs(experts, seed=1)
    err = relative_error(forward_with(experts, "eager", *inputs), reference_experts(experts, *inputs))
    assert err <= rtol[torch.float32], f"{class_name}: eager vs float64 reference, relative error {err:.3g}"


@pytest.mark.parametrize("family", MAIN_FAMILIES)
def test_main_family_bf16(backend, family, rtol):
    class_name = next(c for f, c in discover_families() if f == family)
    experts = copy.deepcopy(cached_experts(family, class_name)).to(torch.bfloat16)
    inputs = routed_inputs(experts, seed=2, dtype=torch.bfloat16)
    want_TH = forward_with(experts, "eager", *inputs)
    got_TH = forward_with(experts, f"moe_lab_{backend}", *inputs)
    assert got_TH.dtype == torch.bfloat16
    assert relative_error(got_TH, want_TH) <= rtol[torch.bfloat16]


# --- whole models -------------------------------------------------------------------------------------------------

@pytest.fixture
def spy():
    """Counts the calls that reach each moe_lab backend through transformers."""
    calls = dict.fromkeys(BACKENDS, 0)
    originals = dict(BACKENDS)

    def counting(name):
        def fn(*args, **kwargs):
            calls[name] += 1
            return originals[name](*args, **kwargs)
        return fn

    BACKENDS.update({name: counting(name) for name in originals})
    register_with_transformers()
    try:
        yield calls
    finally:
        BACKENDS.update(originals)
        register_with_transformers()


def tiny_model(family: str, implementation: str = "eager", seed: int = 0):
    config = tiny_config(transformers.CONFIG_MAPPING[family], MODEL_SIZES)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, experts_implementation=implementation).eval()
    experts_cls = hf_experts_class(config)
    moe_layers = [m for m in model.modules() if isinstance(m, experts_cls)]
    assert moe_layers, f"the tiny {family} model has no MoE layer"
    for i, experts in enumerate(moe_layers):  # experts weights of a scale that matters next to the residual
        init_expert_weights_(experts, seed=seed + i)
    return model


@functools.cache
def eager_logits(family: str) -> tuple[dict, torch.Tensor, torch.Tensor]:
    model = tiny_model(family)
    input_ids = torch.randint(0, MODEL_SIZES["experts"] * 20, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model.state_dict(), input_ids, model(input_ids).logits


@pytest.mark.parametrize("family", MAIN_FAMILIES)
def test_from_config_with_moe_lab(backend, family, spy, rtol):
    state, input_ids, want = eager_logits(family)
    model = AutoModelForCausalLM.from_config(tiny_config(transformers.CONFIG_MAPPING[family], MODEL_SIZES),
                                             experts_implementation=f"moe_lab_{backend}").eval()
    model.load_state_dict(state)
    with torch.no_grad():
        got = model(input_ids).logits
    assert spy[backend] > 0, f"moe_lab_{backend} was never called"
    err = relative_error(got, want)
    assert err <= rtol[torch.float32], f"{family} from_config(moe_lab_{backend}): logits relative error {err:.3g}"


@pytest.mark.parametrize("family", MAIN_FAMILIES)
def test_set_experts_implementation(backend, family, spy, rtol):
    state, input_ids, want = eager_logits(family)
    model = tiny_model(family)
    model.load_state_dict(state)
    model.set_experts_implementation(f"moe_lab_{backend}")
    with torch.no_grad():
        got = model(input_ids).logits
    assert spy[backend] > 0, f"moe_lab_{backend} was never called"
    assert relative_error(got, want) <= rtol[torch.float32]
    model.set_experts_implementation("eager")  # and back
    calls = spy[backend]
    with torch.no_grad():
        assert torch.equal(model(input_ids).logits, want)
    assert spy[backend] == calls


# --- the shapes in data/ use their family's layout ----------------------------------------------------------------

@pytest.mark.parametrize("name", list(model_shapes()))
def test_shape_layout_is_the_familys(name, rtol):
    """moe_lab's `Experts` with the layout model_shapes.yaml gives, loaded with the family's experts weights,
    computes what the family's experts compute (gpt-oss: interleaved, transposed, biases, clamped SwiGLU)."""
    shape = get_shape(name)
    config = build_config(name)
    for key, value in tiny_overrides(config.to_dict(), EXPERTS_SIZES).items():
        if key != "swiglu_limit":  # the yaml's own limit, made to bite by larger inputs below
            setattr(config, key, value)
    if shape.layout.gate_fn == "clamped_swiglu":
        assert (shape.layout.swiglu_limit, shape.layout.swiglu_alpha) == (config.swiglu_limit, config.swiglu_alpha)
    config._experts_implementation = "eager"
    family_experts = init_expert_weights_(hf_experts_class(config)(config), seed=3).eval()
    for flag in ("has_gate", "is_concatenated", "is_transposed", "has_bias", "has_post_expert_norm"):
        assert getattr(shape.layout, flag) == getattr(family_experts, flag), f"{name}: {flag}"
    ours = Experts(EXPERTS_SIZES["experts"], EXPERTS_SIZES["hidden"], EXPERTS_SIZES["intermediate"], shape.layout)
    ours.load_state_dict(family_experts.state_dict())
    x_TH, ids_TK, weights_TK = routed_inputs(ours, seed=3)
    inputs = (10 * x_TH, ids_TK, weights_TK)  # gate and up values beyond the clamp limit
    with torch.no_grad():
        err = relative_error(moe_lab.get_backend("eager")(ours, *inputs), family_experts(*inputs))
    assert err <= rtol[torch.float32], f"{name}: the yaml layout computes something else ({err:.3g})"

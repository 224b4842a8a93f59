"""benchmarks/config_ab.py: how variant b is made from the tuned config, and its arguments (CPU, no timing)."""

from __future__ import annotations

import config_ab
import pytest

TUNED = {"path": "grouped", "BLOCK_M": 128, "HALF_TAIL": 1,
         "up": {"BLOCK_N": 128, "BLOCK_K": 64, "num_warps": 8}, "down": {"BLOCK_N": 256, "TMA": 1}}


def test_a_patch_changes_tile_fields_and_keeps_the_others():
    b = config_ab.patched(TUNED, {"HALF_TAIL": 0, "down": {"BLOCK_N": 128, "A_TMA": 1}})
    assert b == {"path": "grouped", "BLOCK_M": 128, "HALF_TAIL": 0,
                 "up": {"BLOCK_N": 128, "BLOCK_K": 64, "num_warps": 8},
                 "down": {"BLOCK_N": 128, "TMA": 1, "A_TMA": 1}}
    assert TUNED["down"] == {"BLOCK_N": 256, "TMA": 1} and TUNED["HALF_TAIL"] == 1  # the tuned config untouched


def test_a_patch_reaches_into_nested_entries():
    tuned = {**TUNED, "ws": {"BLOCK_M": 128, "up": {"STAGES": 4, "GROUP_M": 8}, "down": {"STAGES": 5}}}
    b = config_ab.patched(tuned, {"ws": {"up": {"EXPERT_GROUPS": 1}}})
    assert b["ws"] == {"BLOCK_M": 128, "up": {"STAGES": 4, "GROUP_M": 8, "EXPERT_GROUPS": 1}, "down": {"STAGES": 5}}
    assert tuned["ws"]["up"] == {"STAGES": 4, "GROUP_M": 8}  # the tuned config untouched


def test_a_patch_adds_keys_the_config_lacks():
    assert config_ab.patched({"path": "decode"}, {"EVICT_FIRST": 1, "up": {"BLOCK_N": 4}}) == \
        {"path": "decode", "EVICT_FIRST": 1, "up": {"BLOCK_N": 4}}


@pytest.mark.parametrize("argv", [[], ["--name", "x"], ["--patch", '{"PDL": 0}'], ["--b-heuristic"],
                                  ["--name", "x", "--dtype", "float32", "--b-heuristic"],
                                  ["--key", "PDL", "--b-heuristic"]],
                         ids=["nothing", "name_only", "patch_without_name", "heuristic_without_name",
                              "a_dtype_with_no_tuned_tiles", "heuristic_with_a_key"])
def test_refuses_a_run_with_no_variant_or_no_name(argv, tmp_path):
    with pytest.raises(SystemExit) as err:
        config_ab.main(["--out", str(tmp_path), *argv])
    assert err.value.code == 2

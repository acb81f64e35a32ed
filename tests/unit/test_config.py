"""qbench.config.schema.load_config: one-line errors with key paths and did-you-mean; variants.expand."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from calibrators.entropy import Entropy
from calibrators.minmax import MinMax
from calibrators.percentile import Percentile
from qbench.config.schema import ExclusionCfg, load_config
from qbench.config.errors import ConfigError
from qbench.run.variants import expand

MINIMAL = """\
name: unit-test
model:
  source: sentence-transformers/all-MiniLM-L6-v2
data:
  manifest: data/manifest.yaml
"""


@pytest.fixture
def cfg_dir(tmp_path) -> Path:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "manifest.yaml").write_text("splits: {}\n")
    return tmp_path


def _write(d: Path, text: str, name: str = "cfg.yaml") -> Path:
    p = d / name
    p.write_text(textwrap.dedent(text))
    return p


def _error(path: Path) -> str:
    with pytest.raises(ConfigError) as ei:
        load_config(path)
    msg = str(ei.value)
    assert "\n" not in msg, f"expected one line, got: {msg!r}"
    assert msg.startswith(f"{path}: ")
    return msg


def test_minimal_config_loads_with_defaults(cfg_dir):
    cfg = load_config(_write(cfg_dir, MINIMAL))
    assert cfg.name == "unit-test"
    assert cfg.manifest_path() == (cfg_dir / "data" / "manifest.yaml").resolve()
    assert cfg.model_source() == "sentence-transformers/all-MiniLM-L6-v2"
    assert cfg.calibration.histogram_bins == 2048
    assert cfg.sweep.baselines == ["fp32", "ort_dynamic", "ort_static"]
    assert cfg.sweep.calibrators == [{"name": "minmax"}]
    assert cfg.measure.eval_batch_size == 32


def test_local_model_dir_resolved_against_config_folder(cfg_dir):
    (cfg_dir / "mymodel").mkdir()
    cfg = load_config(_write(cfg_dir, MINIMAL.replace("sentence-transformers/all-MiniLM-L6-v2", "./mymodel")))
    assert cfg.model_source() == str((cfg_dir / "mymodel").resolve())


def test_missing_local_model_dir(cfg_dir):
    p = _write(cfg_dir, MINIMAL.replace("sentence-transformers/all-MiniLM-L6-v2", "./nomodel"))
    assert "model.source: " in _error(p)


def test_full_config_loads(cfg_dir):
    cfg = load_config(_write(cfg_dir, MINIMAL + """\
calibration: {batch_size: 8, histogram_bins: 1024}
sweep:
  calibrators:
    - {name: entropy, stride: 2}
    - {name: percentile, percentile: 99.9}
  exclusion_sets:
    no_ln: {op_types: [LayerNormalization], names: ['^/encoder/layer\\.0/']}
  exclusions: [none, no_ln]
  flavors: [s8s8, u8s8]
  extra:
    - {calibrator: {name: minmax, moving_average: true}, exclusion: no_ln, flavor: u8s8}
measure: {eval_batch_size: 4}
"""))
    assert cfg.sweep.exclusion("no_ln") == ExclusionCfg(op_types=["LayerNormalization"],
                                                       names=["^/encoder/layer\\.0/"])
    assert cfg.sweep.exclusion("none") == ExclusionCfg()
    assert cfg.calibration.histogram_bins == 1024 and cfg.measure.eval_batch_size == 4


def test_mistyped_top_level_key(cfg_dir):
    msg = _error(_write(cfg_dir, MINIMAL + "calibraton: {batch_size: 8}\n"))
    assert re.fullmatch(r".*cfg\.yaml: calibraton: unknown key \(did you mean 'calibration'\?\)", msg), msg


def test_mistyped_calibrator_param(cfg_dir):
    msg = _error(_write(cfg_dir, MINIMAL + "sweep:\n  calibrators:\n    - {name: percentile, percentle: 99.9}\n"))
    assert re.fullmatch(r".*cfg\.yaml: sweep\.calibrators\[0\]\.percentle: unknown key "
                        r"\(did you mean 'percentile'\?\)", msg), msg


def test_mistyped_nested_key(cfg_dir):
    msg = _error(_write(cfg_dir, MINIMAL + "sweep:\n  extra:\n    - {calibrator: {name: minmax}, flavour: u8s8}\n"))
    assert re.fullmatch(r".*: sweep\.extra\[0\]\.flavour: unknown key \(did you mean 'flavor'\?\)", msg), msg


def test_mistyped_key_inside_exclusion_set(cfg_dir):
    msg = _error(_write(cfg_dir, MINIMAL + "sweep:\n  exclusion_sets:\n    a: {op_type: [Softmax]}\n"))
    assert "sweep.exclusion_sets.a.op_type: unknown key (did you mean 'op_types'?)" in msg


def test_bad_sampler_param_path(cfg_dir):
    msg = _error(_write(cfg_dir, MINIMAL.replace(
        "  manifest: data/manifest.yaml\n",
        "  manifest: data/manifest.yaml\n  calibration: {sampler: {name: random, sed: 1}}\n")))
    assert "data.calibration.sampler.sed: unknown key" in msg


def test_wrong_type(cfg_dir):
    msg = _error(_write(cfg_dir, MINIMAL + "measure: {eval_batch_size: big}\n"))
    assert re.fullmatch(r".*cfg\.yaml: measure\.eval_batch_size: .*integer.*", msg), msg


def test_out_of_range_and_missing_required(cfg_dir):
    msg = _error(_write(cfg_dir, MINIMAL + "calibration: {histogram_bins: 64}\n"))
    assert "calibration.histogram_bins: " in msg and "128" in msg
    msg = _error(_write(cfg_dir, "name: x\ndata: {manifest: data/manifest.yaml}\n"))
    assert msg.endswith(": model: required key is missing")


def test_baselines_must_include_fp32(cfg_dir):
    msg = _error(_write(cfg_dir, MINIMAL + "sweep: {baselines: [ort_dynamic]}\n"))
    assert "sweep.baselines: " in msg and "fp32" in msg


def test_malformed_yaml(cfg_dir):
    msg = _error(_write(cfg_dir, MINIMAL + "sweep: {calibrators: [\n"))
    assert re.fullmatch(r".*cfg\.yaml: line \d+: malformed YAML: .*", msg), msg


def test_not_a_mapping_and_missing_file(cfg_dir):
    msg = _error(_write(cfg_dir, "- just\n- a list\n"))
    assert msg.endswith("(top level): expected a mapping of keys, got list")
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(cfg_dir / "nope.yaml")


def test_unknown_calibrator_name(cfg_dir):
    msg = _error(_write(cfg_dir, MINIMAL + "sweep:\n  calibrators:\n    - {name: minmax}\n    - {name: entropi}\n"))
    assert re.fullmatch(r".*cfg\.yaml: sweep\.calibrators\[1\]\.name: .*'entropi'.*Did you mean: entropy\?", msg), msg


def test_unknown_exclusion_set(cfg_dir):
    msg = _error(_write(cfg_dir, MINIMAL + """\
sweep:
  exclusion_sets: {no_ln: {op_types: [LayerNormalization]}}
  exclusions: [none, no_lm]
"""))
    assert re.fullmatch(r".*cfg\.yaml: sweep\.exclusions\[1\]: unknown exclusion set 'no_lm' "
                        r"\(did you mean 'no_ln'\?\)", msg), msg


def test_missing_manifest(cfg_dir):
    msg = _error(_write(cfg_dir, MINIMAL.replace("data/manifest.yaml", "data/missing.yaml")))
    assert msg.endswith(f"data.manifest: file not found: {(cfg_dir / 'data' / 'missing.yaml').resolve()}")


def test_several_problems_one_line_each(cfg_dir):
    p = _write(cfg_dir, MINIMAL.replace("data/manifest.yaml", "data/missing.yaml")
               + "sweep: {calibrators: [{name: entropi}]}\n")
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    lines = str(ei.value).split("\n")
    assert len(lines) == 2 and all(line.startswith(f"{p}: ") for line in lines)


def test_base_dir_is_not_a_user_key(cfg_dir):
    assert _error(_write(cfg_dir, MINIMAL + "base_dir: /tmp\n")).endswith(": base_dir: unknown key")


def test_expand_grid(cfg_dir):
    cfg = load_config(_write(cfg_dir, MINIMAL + """\
sweep:
  calibrators:
    - {name: entropy}
    - {name: percentile, percentile: 99.9}
  exclusion_sets: {x: {op_types: [Softmax]}}
  exclusions: [none, x]
  flavors: [s8s8, u8s8]
  extra:
    - {calibrator: {name: entropy}, exclusion: x, flavor: u8s8}   # duplicate of a grid cell
    - {calibrator: {name: minmax}, exclusion: none, flavor: s8s8}
"""))
    vs = expand(cfg)
    ids = [v.id for v in vs]
    assert len(ids) == len(set(ids))
    assert ids[:3] == ["fp32", "ort_dynamic", "ort_static"]
    assert all(v.kind == "baseline" for v in vs[:3])
    q = vs[3:]
    assert len(q) == 9 and all(v.kind == "qbench" for v in q)
    assert {(v.calibrator.signature(), v.exclusion, v.flavor) for v in q[:8]} == {
        (c, e, f) for c in ("entropy", "percentile[percentile=99.9]") for e in ("none", "x") for f in ("s8s8", "u8s8")}
    assert q[0].id == "entropy+none+s8s8" and isinstance(q[0].calibrator, Entropy)
    assert isinstance(q[-1].calibrator, MinMax) and q[-1].id == "minmax+none+s8s8"
    assert all(isinstance(v.calibrator, Percentile) for v in q if v.id.startswith("percentile"))
    by_id = {v.id: v for v in q}
    assert by_id["entropy+x+u8s8"].exclusion_cfg == ExclusionCfg(op_types=["Softmax"])
    assert by_id["entropy+none+u8s8"].exclusion_cfg == ExclusionCfg()
    assert by_id["percentile[percentile=99.9]+x+s8s8"].signature("random[n=8,s=0]") == (
        "cal:percentile[percentile=99.9]|set:random[n=8,s=0]|excl:x|flavor:s8s8|be:ort")
    assert vs[0].signature("ignored") == "baseline:fp32|be:ort"


def test_expand_plain_grid_counts(cfg_dir):
    cfg = load_config(_write(cfg_dir, MINIMAL + """\
sweep:
  baselines: [fp32]
  calibrators: [{name: minmax}, {name: percentile}]
  exclusion_sets: {x: {names: [fc1]}}
  exclusions: [none, x]
  flavors: [s8s8, u8s8]
"""))
    vs = expand(cfg)
    assert [v.id for v in vs if v.kind == "baseline"] == ["fp32"]
    q = [v.id for v in vs if v.kind == "qbench"]
    assert len(vs) == 9 and len(q) == 8 == len(set(q))
    assert q[0] == "minmax+none+s8s8" and q[-1] == "percentile[percentile=99.99]+x+u8s8"


def test_weight_rule_is_validated_in_config(cfg_dir):
    load_config(_write(cfg_dir, MINIMAL + "calibration: {weights: {name: per_tensor}}\n"))
    msg = _error(_write(cfg_dir, MINIMAL + "calibration: {weights: {name: per_tensnor}}\n"))
    assert "calibration.weights.name: Unknown weight rule 'per_tensnor'. Did you mean: per_tensor?" in msg


@pytest.mark.parametrize("extra, needle", [
    ("sweep: {baselines: [fp32, ort_static]}", "sweep.baselines: ort_static is not available for translation"),
    ("gate: {metric: accuracy_at_1, max_drop: 0.5, per: all}", "gate.metric: translation is gated on bleu or chrf"),
    ("generation: {num_beams: 0}", "generation.num_beams"),
    ("calibration: {decoder_targets: greedy}", "calibration.decoder_targets"),
])
def test_translation_settings_are_checked(cfg_dir, extra, needle):
    msg = _error(_write(cfg_dir, MINIMAL + "task: translation\n" + extra + "\n"))
    assert needle in msg


def test_retrieval_gate_must_be_overall_accuracy(cfg_dir):
    msg = _error(_write(cfg_dir, MINIMAL + "gate: {metric: bleu, max_drop: 1.0, per: all}\n"))
    assert "gate.metric: retrieval is gated on accuracy_at_1" in msg


def test_translation_config_loads(cfg_dir):
    cfg = load_config(_write(cfg_dir, MINIMAL + textwrap.dedent("""\
        task: translation
        gate: {metric: chrf, max_drop: 0.5, per: lang}
        generation: {num_beams: 4, max_new_tokens: 64}
        """)))
    assert (cfg.task, cfg.gate.metric, cfg.gate.per, cfg.generation.num_beams) == ("translation", "chrf", "lang", 4)
    assert cfg.calibration.decoder_targets == "reference" and cfg.model.source_prefix == ""
    assert cfg.sweep.baselines == ["fp32", "ort_dynamic"]  # ort_static takes one graph: not a translation default


def test_role_names_stand_for_their_own_exclusion_set(cfg_dir):
    cfg = load_config(_write(cfg_dir, MINIMAL + textwrap.dedent("""\
        sweep:
          baselines: [fp32, fp16]
          exclusions: [none, [layernorm, softmax], lm_head]
          extra: [{calibrator: {name: minmax}, exclusion: [embeddings]}]
        """)))
    assert cfg.sweep.exclusions == ["none", "layernorm+softmax", "lm_head"]
    assert cfg.sweep.exclusion("layernorm+softmax") == ExclusionCfg(roles=["layernorm", "softmax"])
    assert cfg.sweep.exclusion("lm_head") == ExclusionCfg(roles=["lm_head"])
    assert cfg.sweep.extra[0].exclusion == "embeddings"
    ids = [v.id for v in expand(cfg)]
    assert ids == ["fp32", "fp16", "minmax+none+s8s8", "minmax+layernorm+softmax+s8s8", "minmax+lm_head+s8s8",
                   "minmax+embeddings+s8s8"]
    # The fp16 baseline carries the nodes it keeps in FP32 as its exclusion (checked in the engine).
    assert expand(cfg)[1].exclusion_cfg == ExclusionCfg(roles=["layernorm", "softmax"])


def test_a_user_defined_set_wins_over_the_role_shorthand(cfg_dir):
    cfg = load_config(_write(cfg_dir, MINIMAL + textwrap.dedent("""\
        sweep:
          exclusion_sets: {lm_head: {names: [lm_head]}}
          exclusions: [lm_head]
        """)))
    assert cfg.sweep.exclusion("lm_head") == ExclusionCfg(names=["lm_head"])


def test_a_list_of_unknown_roles_is_one_line(cfg_dir):
    msg = _error(_write(cfg_dir, MINIMAL + "sweep: {exclusions: [none, [layernorm, softmaxx]]}\n"))
    assert msg.endswith("cfg.yaml: sweep: Value error, a list in exclusions holds role names "
                        "(layernorm, softmax, embeddings, lm_head, mlp_gate); got ['layernorm', 'softmaxx']")


def test_auto_exclusion_needs_a_gate(cfg_dir):
    msg = _error(_write(cfg_dir, MINIMAL + "sweep: {exclusions: [none, auto]}\n"))
    assert "sweep.exclusions: 'auto' searches for the fastest variant within the gate's budget; add a gate" in msg
    cfg = load_config(_write(cfg_dir, MINIMAL + "sweep: {exclusions: [auto]}\n"
                             "gate: {metric: accuracy_at_1, max_drop: 0.5, per: all}\nsearch: {n: 64, units: ['layer0']}\n"))
    assert [v.id for v in expand(cfg)][-1] == "minmax+auto+s8s8" and cfg.search.units == ["layer0"]
    assert cfg.sweep.exclusion("auto") == ExclusionCfg()

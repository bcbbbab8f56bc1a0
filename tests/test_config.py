"""params.yaml loading: strict keys and types, presets, the committed file."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tanet.config import PRESETS, dump_params, load_params, params_from_dict, preset_params, set_key
from tanet.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_committed_params_yaml_is_the_quick_preset() -> None:
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert data == preset_params("quick"), "params.yaml drifted from `tanet params --preset quick`"
    params = load_params(ROOT / "params.yaml")
    assert params.preset == "quick"
    assert params.model.align_block == params.patches.patch_size


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_validates_and_round_trips(name: str, tmp_path: Path) -> None:
    data = preset_params(name)
    path = tmp_path / "params.yaml"
    path.write_text(dump_params(data))
    assert load_params(path).to_dict() == data


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("patches.patch_sise", 32, r"params.yaml: patches.patch_sise: unknown key"),
        ("degrade.scales", [-4], r"params.yaml: degrade.scales\[0\]: must be 2, 3 or 4 \(got -4\)"),
        ("patches.patch_size", "big", r"patches.patch_size: expected an integer, got str 'big'"),
        ("train.lr", True, r"train.lr: expected a number, got bool True"),
        ("model.branch.kind", "unet", r"model.branch.kind: must be one of"),
        ("model.scale", 3, r"model.scale: 3 is not among degrade.scales"),
        ("model.align_block", 16, r"model.align_block: not settable"),
        ("ingest.val_clips", "bikes", r"ingest.val_clips: expected a list"),
        ("patches.zstd_level", 30, r"patches.zstd_level: must be in \[-100, 22\]"),
    ],
)
def test_bad_values_name_file_and_key(tmp_path: Path, key: str, value: object, message: str) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(dump_params(set_key(preset_params("quick"), key, value)))
    with pytest.raises(ConfigError, match=message):
        load_params(path)


def test_missing_section_and_missing_file(tmp_path: Path) -> None:
    data = preset_params("quick")
    del data["train"]
    with pytest.raises(ConfigError, match="train: missing section"):
        params_from_dict(data, "params.yaml")
    with pytest.raises(ConfigError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")


def test_params_round_trip_through_their_dict() -> None:
    """What a stage logs (``to_dict``) loads back to the same params, derived keys included."""
    for name in ("tiny", "quick", "full"):
        params = params_from_dict(preset_params(name))
        again = params_from_dict(params.to_dict())
        assert again == params and again.model.align_block == params.patches.patch_size
    assert params_from_dict(preset_params("tiny", {"train.steps": 3})) != params_from_dict(preset_params("tiny"))


def test_a_key_given_twice_is_an_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    text = dump_params(preset_params("quick")).replace("train:\n  steps: 600\n", "train:\n  steps: 600\n  steps: 5\n")
    path.write_text(text)
    line = text.splitlines().index("  steps: 5") + 1
    with pytest.raises(
        ConfigError, match=rf"params.yaml: not valid YAML: line {line}, column 3: duplicate key 'steps'"
    ):
        load_params(path)


@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize("override", ["train.lr=1e-4", "train.steps=7", "evaluate.vid4=off", "evaluate.vid4=on"])
def test_params_survive_dvcs_yaml_round_trip(name: str, override: str, tmp_path: Path) -> None:
    """``dvc exp run -S`` rewrites params.yaml with DVC's YAML 1.2 serializer (the same
    ``apply_overrides`` it calls): 'off' loses its quotes, 1e-4 stays without a dot."""
    from dvc.utils.hydra import apply_overrides

    path = tmp_path / "params.yaml"
    path.write_text(dump_params(preset_params(name)))
    apply_overrides(path, [override])
    key, _, raw = override.partition("=")
    value = yaml.safe_load(raw) if key != "evaluate.vid4" else raw
    if key == "train.lr":
        value = 1e-4
    assert load_params(path).to_dict() == set_key(preset_params(name), key, value)
    # A plain rewrite by DVC (its own dump of what it loaded) changes nothing either.
    apply_overrides(path, [])
    assert load_params(path).to_dict() == set_key(preset_params(name), key, value)

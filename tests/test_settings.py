"""Each stage's settings are defined once (geounet.settings): the CLI options, the workflow
keys and the Python API's fields are the same set, with the same defaults."""

from __future__ import annotations

import click
import pytest

try:   # click >= 8.3 marks an option without a default with a sentinel
    from click._utils import UNSET
except ImportError:
    UNSET = None

from geounet.cli import main
from geounet.cli.vectorize import vector_request, with_vector_options
from geounet.errors import ConfigError
from geounet.predict import PredictConfig
from geounet.settings import PredictSettings, RuntimeSettings, TilingSettings, VectorizeSettings
from geounet.vectorize import VectorizeConfig
from geounet.workflow import Workflow

# The one documented difference: a workflow runs torch on one thread unless told otherwise.
WORKFLOW_DEFAULTS = {"threads": 1}
PER_CALL = {"cog", "overwrite", "progress", "region"}   # how one call writes its files


def cli_defaults(command: str) -> dict[str, object]:
    found = main.get_command(click.Context(main), command)
    assert found is not None
    params = found.params
    return {p.name: None if p.default in (None, UNSET) else p.default for p in params
            if isinstance(p, click.Option) and p.name}


def defaults(model) -> dict[str, object]:
    return {name: field.default for name, field in model.model_fields.items()}


def test_predict_cli_options_are_the_settings_with_their_defaults():
    options = cli_defaults("predict")
    settings = defaults(PredictSettings)
    assert set(settings) <= set(options)
    assert {name: options[name] for name in settings} == settings


def test_workflow_keys_are_the_settings_with_their_defaults():
    workflow = defaults(Workflow)
    assert defaults(Workflow.model_fields["tiling"].annotation) == defaults(TilingSettings)
    runtime = {name: workflow[name] for name in RuntimeSettings.model_fields}
    assert runtime == defaults(RuntimeSettings) | WORKFLOW_DEFAULTS
    assert set(TilingSettings.model_fields) | set(RuntimeSettings.model_fields) == set(
        PredictSettings.model_fields)


def test_api_config_is_the_settings_plus_per_call_options():
    api = defaults(PredictConfig)
    assert set(api) == set(PredictSettings.model_fields) | PER_CALL
    assert {name: api[name] for name in PredictSettings.model_fields} == defaults(
        PredictSettings)


def test_evaluate_shares_the_predict_settings_it_offers():
    options = cli_defaults("evaluate")
    shared = {"device", "engine", "threads", "tta"}
    assert {name: options[name] for name in shared} == {
        name: defaults(PredictSettings)[name] for name in shared}


@pytest.mark.parametrize("values,message", [
    ({"batch_size": 0}, r"batch size \(batch_size\): .*greater than or equal to 1, got 0"),
    ({"window": "gauss"}, r"window: 'gauss' is not known; choose one of hann, average"),
    ({"engine": "tensorrt"}, r"engine: 'tensorrt' is not known; choose one of auto, torch"),
    ({"tile": 512}, r"'tile' is not a setting of PredictConfig; choose from .*tile_size"),
])
def test_a_bad_setting_is_one_line_naming_it(values, message):
    with pytest.raises(ConfigError, match=message):
        PredictConfig(**values)


# -- vectorize -------------------------------------------------------------------------------
def test_vectorize_cli_options_are_the_settings_with_their_defaults():
    settings = defaults(VectorizeSettings)
    for command in ("vectorize", "predict"):   # predict --vector takes the same options
        options = cli_defaults(command)
        assert set(settings) <= set(options), command
        # --centerlines names the lines' file: giving one is the `centerlines` setting.
        assert options.pop("centerlines") is None and settings["centerlines"] is False
        assert {n: options[n] for n in settings if n != "centerlines"} == {
            n: v for n, v in settings.items() if n != "centerlines"}


def test_vectorize_workflow_section_and_api_are_the_settings():
    section = defaults(Workflow.model_fields["vectorize"].annotation)
    assert section == defaults(VectorizeSettings) | {"crs": None}
    assert defaults(VectorizeConfig) == defaults(VectorizeSettings)


def test_vectorize_cli_values_reach_the_config(tmp_path):
    """Options given on the command line arrive in the VectorizeConfig, typed."""
    from click.testing import CliRunner

    seen = {}

    @click.command()
    @with_vector_options
    @click.pass_context
    def probe(ctx):
        seen["config"] = vector_request(ctx).config

    CliRunner().invoke(probe, ["--connectivity", "8", "--classes", "1,3", "--min-area", "2.5",
                               "--linear-classes", "3", "--workers", "1",
                               "--centerlines", str(tmp_path / "l.gpkg")], catch_exceptions=False)
    assert seen["config"] == VectorizeConfig(connectivity=8, classes=(1, 3), min_area=2.5,
                                             linear_classes=(3,), workers=1, centerlines=True)

"""Configs and overrides: numbers as typed, overrides anywhere, every key and value checked.

Issue 16 items 1-4 and issue 19 item 1. The command-line checks run ``calibrant train`` with a
data root that does not exist: a config error must come first, before anything is read,
written or trained.
"""

import json

import pytest
import yaml

from calibrant.cli import build_parser, main
from calibrant.config import apply_overrides, load_config, parse_value, preset_names, yaml_load
from calibrant.config_schema import (
    EVAL_KEYS,
    TRAIN_KEYS,
    Bool,
    ConfigError,
    factory_keywords,
    validate_config,
)
from calibrant.registry import DATASETS, LOSSES, METRICS, MODELS, SUITES


@pytest.fixture(autouse=True)
def _no_training(monkeypatch):
    """A config error must stop ``calibrant train`` before it builds or trains anything."""
    from calibrant import experiment

    def refuse(*args, **kwargs):
        raise AssertionError("training started: the config was not rejected")

    monkeypatch.setattr(experiment, "train_run", refuse)
    monkeypatch.setattr(experiment, "build_experiment", refuse)


def _train(tmp_path, *words, preset="fmnist_lt_ce"):
    """``calibrant train`` into ``tmp_path/run`` with a data root that does not exist."""
    out = tmp_path / "run"
    argv = ["train", preset, "--out", str(out), "--data-root", str(tmp_path / "no_data")]
    return main([*argv, "--device", "cpu", *words]), out


# -------------------------------------------------- issue 19 item 1: numbers as users type them


@pytest.mark.parametrize(
    ("text", "value"),
    [("1e-3", 1e-3), ("5e-4", 5e-4), ("1E-3", 1e-3), ("-2e+1", -20.0), ("2e3", 2000.0)],
)
def test_scientific_notation_is_a_number(text, value):
    assert yaml.safe_load(text) == text  # YAML 1.1 (PyYAML) reads them as strings
    got = parse_value(text)
    assert isinstance(got, float) and got == value
    assert yaml_load(f"lr: {text}") == {"lr": value}
    assert yaml_load(f"[{text}, {text}]") == [value, value]


def test_other_scalars_keep_their_yaml_meaning():
    assert parse_value("1.0e-3") == 1e-3 and parse_value(".5") == 0.5 and parse_value("-.5") == -0.5
    assert parse_value("3") == 3 and isinstance(parse_value("3"), int)
    assert parse_value("1_000") == 1000
    assert parse_value(".inf") == float("inf")
    for text in ("1e-3x", "e5", "1e", "1.2.3", "adam", "2024-01-01x"):
        assert isinstance(parse_value(text), str), text
    assert parse_value("") == ""
    # the loader is a subclass: PyYAML itself is not changed
    assert yaml.safe_load("1e-3") == "1e-3"


def test_override_and_config_file_read_scientific_numbers(tmp_path):
    cfg = apply_overrides(load_config("fmnist_lt_ce"), ["optim.lr=1e-3", "optim.weight_decay=5E-4"])
    assert cfg["optim"]["lr"] == 1e-3 and cfg["optim"]["weight_decay"] == 5e-4
    path = tmp_path / "mine.yaml"
    path.write_text("base: fmnist_lt_ce\noptim: {lr: 1e-3, weight_decay: 5e-4}\n")
    cfg = load_config(path)
    assert cfg["optim"] == {"name": "sgd", "lr": 1e-3, "momentum": 0.9, "weight_decay": 5e-4}
    validate_config(cfg)


def test_cli_reads_lr_1e_3_as_a_number(tmp_path, capsys):
    code, out = _train(tmp_path, "optim.lr=1e-3", "--dry-run")
    assert code == 0, capsys.readouterr().err
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["optim"]["lr"] == 1e-3
    assert not out.exists()


def test_a_float_is_checked_where_one_is_expected(tmp_path, capsys):
    code, out = _train(tmp_path, "optim.lr=abc")
    assert code == 2
    err = capsys.readouterr().err
    assert "optim.lr must be a number" in err and "'abc'" in err
    assert not out.exists()


# ------------------------------------------------------ issue 16 item 1: overrides after --out


def test_overrides_after_out_are_accepted(tmp_path, capsys):
    code, out = _train(tmp_path, "train.epochs=1", "model.hidden=[32]", "--dry-run")
    assert code == 0, capsys.readouterr().err
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["train"]["epochs"] == 1 and printed["model"]["hidden"] == [32]
    assert not out.exists()  # a dry run writes nothing


def test_overrides_before_and_after_options_keep_their_order(tmp_path, capsys):
    argv = ["train", "fmnist_lt_ce", "train.epochs=3", "--out", str(tmp_path / "r")]
    assert main([*argv, "train.epochs=2", "--seed", "7", "train.batch_size=8", "--dry-run"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["train"] == {"epochs": 2, "batch_size": 8, "seed": 7}


def test_unknown_options_are_still_rejected(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "fmnist_lt_ce", "--out", str(tmp_path), "--ovewrite"])
    assert exc.value.code == 2
    assert "unrecognized arguments: --ovewrite" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # other commands take no key=value words
        main(["eval", str(tmp_path), "train.epochs=1"])


def test_a_word_after_out_without_equals_is_an_override_error(tmp_path, capsys):
    code, _ = _train(tmp_path, "loss")
    assert code == 2
    assert "key=value" in capsys.readouterr().err


# ------------------------------------------------------------ issue 16 item 2: misspelt keys


@pytest.mark.parametrize(
    ("preset", "override", "names", "suggests"),
    [
        ("fmnist_lt_ce", "trian.epochs=1", "unknown section 'trian'", "'train'"),
        ("fmnist_lt_ce", "train.epochz=1", "'train.epochz'", "'train.epochs'"),
        ("fmnist_lt_ce", "eval.selct=accuracy", "'eval.selct'", "'eval.select'"),
        ("fmnist_lt_cals_alm", "loss.marign=5", "'loss.marign'", "'margin'"),
        ("fmnist_lt_ce", "model.hiden=[4]", "'model.hiden'", "'hidden'"),
        (
            "fmnist_lt_ce",
            "data.imbalance_ration=10",
            "'data.imbalance_ration'",
            "'imbalance_ratio'",
        ),
        ("fmnist_lt_ce", "optim.momentun=0.5", "'optim.momentun'", "'momentum'"),
        ("acdc_ce", "sched.step_sise=4", "'sched.step_sise'", "'step_size'"),
        ("acdc_crac", "loss.rho_int=1", "'loss.rho_int'", "'rho_init'"),
        (
            "hippocampus_ce",
            "data.train.patch_sise=[8,8,8]",
            "'data.train.patch_sise'",
            "'patch_size'",
        ),
        ("fmnist_lt_ce", "loss=crak", "unknown loss 'crak'", "'crac'"),
        ("fmnist_lt_ce", "optim=adamm", "unknown optimizer 'adamm'", "'adam'"),
        (
            "fmnist_lt_ce",
            "eval.val_metrics=[{name: acuracy}]",
            "unknown metric 'acuracy'",
            "'accuracy'",
        ),
        (
            "fmnist_lt_ce",
            "eval.test_metrics=[{name: ece, n_bin: 10}]",
            "'eval.test_metrics[0].n_bin'",
            "'n_bins'",
        ),
    ],
)
def test_misspelt_keys_name_the_key_suggest_and_exit_2(
    tmp_path, capsys, preset, override, names, suggests
):
    code, out = _train(tmp_path, override, preset=preset)
    err = capsys.readouterr().err
    assert code == 2, err
    assert names in err and f"did you mean {suggests}" in err, err
    assert "Traceback" not in err
    assert not out.exists()  # nothing written


def test_crac_has_no_margin(tmp_path, capsys):
    """The README's old example ``acdc_crac ... loss.margin=5``: CRaC has no margin."""
    code, _ = _train(tmp_path, "loss.margin=5", preset="acdc_crac")
    assert code == 2
    err = capsys.readouterr().err
    assert "unknown key 'loss.margin': loss 'crac' takes no argument 'margin'" in err
    assert "inner_target_scale" in err  # the valid arguments are listed


def test_keys_calibrant_sets_itself_are_refused(tmp_path, capsys):
    assert _train(tmp_path, "data.split=val")[0] == 2
    assert "data.split cannot be set" in capsys.readouterr().err
    assert _train(tmp_path, "calibrator=temperature")[0] == 2
    assert "calibrant calibrate" in capsys.readouterr().err


def test_eval_select_must_be_a_validation_metric(tmp_path, capsys):
    assert _train(tmp_path, "eval.select=acuracy")[0] == 2
    err = capsys.readouterr().err
    assert "eval.select 'acuracy' is not a validation metric" in err
    assert "did you mean 'accuracy'" in err


def test_duplicate_metric_labels_are_refused():
    cfg = load_config("fmnist_lt_ce")
    cfg["eval"]["test_metrics"].append({"name": "nll"})
    with pytest.raises(ConfigError, match=r"label 'nll' is already used by eval.test_metrics\[4\]"):
        validate_config(cfg)


def test_missing_section_and_not_a_mapping(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: {name: mulan_scene}\nloss: {name: bce}\n")
    with pytest.raises(ConfigError, match="missing section 'model'"):
        validate_config(load_config(path))
    cfg = load_config("fmnist_lt_ce")
    cfg["train"] = 5
    with pytest.raises(ConfigError, match="train must be a mapping"):
        validate_config(cfg)


# ---------------------------------------------------------------- issue 16 item 3: bad values


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.epochs=abc", "train.epochs must be an integer >= 1, got 'abc'"),
        ("train.epochs=0", "train.epochs must be an integer >= 1, got 0"),
        ("train.epochs=-1", "train.epochs must be an integer >= 1, got -1"),
        ("train.epochs=1.5", "train.epochs must be an integer >= 1, got 1.5"),
        ("train.epochs=true", "train.epochs must be an integer >= 1, got True"),
        ("train.batch_size=0", "train.batch_size must be an integer >= 1"),
        ("train.seed=-3", "train.seed must be an integer >= 0"),
        ("train.amp=fp32", "train.amp must be one of none, bf16, fp16 or null, got 'fp32'"),
        ("train.clip_grad=0", "train.clip_grad must be a number > 0 or null, got 0"),
        ("train.channels_last=3", "train.channels_last must be true or false, got 3"),
        ("train.sync_batchnorm=yes please", "train.sync_batchnorm must be true or false"),
        ("eval.checkpoint=bset", "eval.checkpoint must be one of best, last, got 'bset'"),
        ("eval.select_mode=maximum", "eval.select_mode must be one of max, min"),
        ("model.dropout=high", "model.dropout must be a number (an argument of model 'mlp')"),
        ("data.imbalance_ratio=[1]", "data.imbalance_ratio must be a number or null"),
        ("optim.nesterov=1", "optim.nesterov must be true or false"),
    ],
)
def test_bad_values_name_the_key_and_the_expected_type(tmp_path, capsys, override, message):
    code, out = _train(tmp_path, override)
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err, err
    assert not out.exists()


def test_seed_option_is_checked_too(tmp_path, capsys):
    assert _train(tmp_path, "--seed", "-1")[0] == 2
    assert "train.seed must be an integer >= 0" in capsys.readouterr().err


def test_good_values_pass(tmp_path, capsys):
    words = [
        "train.sync_batchnorm=false",
        "eval.checkpoint=last",
        "train.amp=null",
        "train.clip_grad=1",  # an int where a number is expected
        "train.patience=3",
        "data.imbalance_ratio=null",
        "--dry-run",
    ]
    code, _ = _train(tmp_path, *words)
    assert code == 0, capsys.readouterr().err


# -------------------------------------------------------------- issue 16 item 4: preset names


def test_misspelt_preset_suggests_the_closest(tmp_path, capsys):
    code, _ = _train(tmp_path, preset="acdc_crak")
    assert code == 2
    err = capsys.readouterr().err
    assert "no config file or preset 'acdc_crak'; did you mean 'acdc_crac'" in err
    assert "presets: " in err


def test_missing_yaml_file_and_base_chain(tmp_path):
    with pytest.raises(FileNotFoundError, match="config file .*nope.yaml.* not found"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "a.yaml").write_text("base: b.yaml\ntrain: {epochs: 2}\n")
    (tmp_path / "b.yaml").write_text("base: fmnist_lt_ce\noptim: {lr: 1e-2}\n")
    cfg = load_config(tmp_path / "a.yaml")  # a relative base is found beside the file
    assert cfg["train"]["epochs"] == 2 and cfg["optim"]["lr"] == 1e-2
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ValueError, match="'base' loops"):
        load_config(tmp_path / "a.yaml")


# ------------------------------------------------------ the schema covers every shipped config


@pytest.mark.parametrize("preset", preset_names())
def test_every_preset_validates(preset):
    validate_config(load_config(preset))


def test_every_benchmark_config_validates():
    """Every run (and every tuning grid point) of every suite is a valid config."""
    count = 0
    for name in SUITES.names():
        suite = SUITES.build(name)
        for task in suite.tasks:
            for method in suite.methods:
                grid = method.search.points() if method.search is not None else []
                for profile in suite.profiles:
                    for tuned in [None, *grid]:
                        validate_config(suite.config(task.name, method.name, profile, 1, tuned))
                        count += 1
    assert count > 100


def test_schema_knows_the_keys_experiment_reads():
    import inspect
    import re

    from calibrant import experiment

    source = inspect.getsource(experiment)
    train = set(re.findall(r'train_cfg\.get\("(\w+)"', source))
    evals = set(re.findall(r'eval_cfg\.get\("(\w+)"', source))
    evals |= set(re.findall(r'cfg\.get\("eval", \{\}\)\.get\("(\w+)"', source))
    assert train and evals
    assert train <= set(TRAIN_KEYS), train - set(TRAIN_KEYS)
    assert evals <= set(EVAL_KEYS), evals - set(EVAL_KEYS)
    assert {"sync_batchnorm"} <= set(TRAIN_KEYS) and {"checkpoint"} <= set(EVAL_KEYS)


def test_schema_is_extensible(monkeypatch):
    cfg = apply_overrides(load_config("fmnist_lt_ce"), ["train.new_option=true"])
    with pytest.raises(ConfigError, match="unknown key 'train.new_option'"):
        validate_config(cfg)
    monkeypatch.setitem(TRAIN_KEYS, "new_option", Bool(doc="a new option"))
    validate_config(cfg)


# -------------------------------------------------------------- factory keyword introspection


def _all_factories():
    for registry in (LOSSES, MODELS, DATASETS, METRICS):
        for name in registry.names():
            yield f"{registry.kind}:{name}", registry.get(name).factory


@pytest.mark.parametrize(("label", "factory"), list(_all_factories()))
def test_every_registered_factory_is_followed(label, factory):
    """``**kwargs`` of every factory lead somewhere calibrant can read, so keys are checked.

    When this fails for a new factory, make its ``**kwargs`` go to a named callable (or declare
    the arguments), so that a misspelt key is not silently accepted.
    """
    keywords = factory_keywords(factory)
    assert not keywords.open, f"{label}: cannot follow its **kwargs"
    assert keywords.params, label


def _required(factory) -> dict:
    """Values for the required arguments the builders pass (num_classes, root, split)."""
    import inspect

    params = inspect.signature(factory).parameters
    given = {"num_classes": 3, "root": "/nonexistent/calibrant", "split": "train"}
    return {k: v for k, v in given.items() if k in params}


@pytest.mark.parametrize(("label", "factory"), list(_all_factories()))
def test_accepted_keywords_reach_the_factory(label, factory):
    """No key the schema accepts is refused by the factory as an unexpected keyword.

    Each accepted key is passed alone with a placeholder value: the factory may reject the
    value (any other error), never the key.
    """
    import re
    import warnings

    placeholder = object()
    for key in factory_keywords(factory).params:
        if key in ("root", "split"):
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                factory(**{**_required(factory), key: placeholder})
        except TypeError as e:
            refused = rf"unexpected keyword argument '{key}'|multiple values for .*'{key}'"
            assert not re.search(refused, str(e)), f"{label}: {e}"
        except Exception:  # the placeholder value may be refused in any way
            pass


def test_factory_keywords_follow_kwargs():
    import functools

    class Base:
        def __init__(self, *, base_opt=1, **kwargs):
            super().__init__(**kwargs)

    class Thing(Base):
        def __init__(self, size: int = 1, **kwargs):
            super().__init__(**kwargs)

    def helper(options, defaults):
        merged = {**defaults, **options}
        return Thing(**merged)

    def factory(name: str, *, rate: float = 0.1, **kw):
        first = kw.pop("popped", None)
        picked = {k: kw.pop(k) for k in ("a", "b") if k in kw}
        return helper(kw, {"size": 2}), first, picked

    def opaque(**kw):
        return kw["f"](**kw)

    keywords = factory_keywords(factory)
    assert set(keywords.params) == {"name", "rate", "popped", "a", "b", "size", "base_opt"}
    assert not keywords.open
    assert keywords.params["rate"] == frozenset({"float"})
    assert keywords.params["size"] == frozenset({"int"})
    assert factory_keywords(opaque).open
    assert set(factory_keywords(functools.partial(Thing, 3)).params) == {"base_opt"}
    assert set(factory_keywords(factory, skip_positional=1).params) == {
        "rate", "popped", "a", "b", "size", "base_opt"
    }  # fmt: skip
    assert set(factory_keywords(lambda x, **kw: Thing(size=x, **kw)).params) == {"x", "base_opt"}


def test_describe_keys_and_list_keys(capsys):
    assert main(["list", "keys"]) == 0
    out = capsys.readouterr().out
    assert "train.epochs" in out and "eval.checkpoint" in out and "train.sync_batchnorm" in out


def test_train_help_shows_overrides_after_options(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    out = capsys.readouterr().out
    assert "before or after the options" in out and "--dry-run" in out


def test_dry_run_prints_a_config_that_loads_back(tmp_path, capsys):
    code, _ = _train(tmp_path, "loss=mbls", "loss.margin=5", "--dry-run")
    assert code == 0
    printed = capsys.readouterr().out
    path = tmp_path / "resolved.yaml"
    path.write_text(printed)
    again = load_config(path)
    validate_config(again)
    assert again["loss"] == {"name": "mbls", "margin": 5}
    expected = apply_overrides(load_config("fmnist_lt_ce"), ["loss=mbls", "loss.margin=5"])
    assert json.dumps(again, sort_keys=True) == json.dumps(expected, sort_keys=True)

"""The run's settings: flags, YAML files, their layering, validation, and what a saved config.yaml means."""

from __future__ import annotations

import dataclasses
import datetime
import re
import typing
from pathlib import Path

import pytest

from cifar.config import (ConfigError, TrainConfig, build_parser, config_flags, load_yaml, parse_config, save_yaml,
                          trajectory_differences)

REQUIRED_FLAGS = ("--model", "--data-dir", "--output-dir", "--epochs", "--batch-size", "--lr", "--optimizer",
                  "--scheduler", "--weight-decay", "--seed", "--mixed-precision", "--cpu", "--subset", "--val-size",
                  "--num-workers", "--checkpoint-every", "--keep-last", "--resume", "--wandb", "--wandb-project",
                  "--wandb-group", "--wandb-name", "--wandb-tags", "--eval-only", "--sync-bn", "--ema", "--compile",
                  "--channels-last", "--config")

FIXED_TIME = datetime.datetime(2024, 1, 2, 3, 4, 5)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "settings.yaml"
    path.write_text(text)
    return path


def error_of(argv: list[str]) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(argv)
    return str(caught.value)


# ---------------------------------------------------------------------------------------------- flags


def test_no_arguments_give_the_field_defaults():
    assert parse_config([]) == TrainConfig()


def test_parser_has_every_required_flag():
    options = {option for action in build_parser()._actions for option in action.option_strings}
    assert [flag for flag in REQUIRED_FLAGS if flag not in options] == []


SWITCHES = ("download", "nesterov", "train_norm_scales", "cpu", "sync_bn", "ema", "compile", "channels_last", "wandb")


def test_every_bool_setting_is_a_switch_listed_here():
    types = typing.get_type_hints(TrainConfig)
    assert tuple(f.name for f in dataclasses.fields(TrainConfig) if types[f.name] is bool) == SWITCHES


@pytest.mark.parametrize("name", SWITCHES)
def test_switches_take_no_value_and_have_a_negative_form(name, capsys):
    flag = "--" + name.replace("_", "-")
    assert getattr(parse_config([flag]), name) is True
    assert getattr(parse_config(["--no-" + flag[2:]]), name) is False
    assert getattr(parse_config([flag, "--no-" + flag[2:]]), name) is False  # the last one wins
    for argv, complaint in (([f"{flag}=yes"], "ignored explicit argument 'yes'"),
                            ([flag, "no"], "unrecognized arguments: no")):
        with pytest.raises(SystemExit) as caught:
            parse_config(argv)
        assert caught.value.code == 2, argv
        assert complaint in capsys.readouterr().err, argv


def test_flag_values_are_converted_to_the_field_types():
    cfg = parse_config(["--epochs", "3", "--lr", "0.05", "--subset", "1000", "--model", "c4net_tiny",
                        "--resume", "auto", "--output-dir", "runs/a"])
    assert (cfg.epochs, cfg.lr, cfg.subset, cfg.model, cfg.resume, cfg.output_dir) == \
        (3, 0.05, 1000, "c4net_tiny", "auto", "runs/a")


@pytest.mark.parametrize("argv, flag", [
    (["--epochs", "ten"], "--epochs"),
    (["--lr", "fast"], "--lr"),
    (["--subset", "1.5"], "--subset"),
])
def test_malformed_flag_value_exits_with_status_2(argv, flag, capsys):
    with pytest.raises(SystemExit) as caught:
        parse_config(argv)
    assert caught.value.code == 2
    assert flag in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- YAML layering


def test_yaml_supplies_settings_the_flags_do_not_give(tmp_path):
    path = write(tmp_path, "epochs: 5\nlr: 0.05\nmodel: c4net_tiny\n")
    cfg = parse_config(["--config", str(path), "--lr", "0.1"])
    assert (cfg.epochs, cfg.lr, cfg.model) == (5, 0.1, "c4net_tiny")
    assert cfg.batch_size == TrainConfig().batch_size


# The flag wins even when it repeats the field default, and wherever it stands relative to --config: a parser
# that compared values with the defaults, or applied settings in argv order, would let the file win here.
@pytest.mark.parametrize("argv", [["--config", "{path}", "--epochs", "35"], ["--epochs", "35", "--config", "{path}"]])
def test_explicit_flag_wins_over_yaml_even_at_its_default_value(tmp_path, argv):
    path = write(tmp_path, "epochs: 5\n")
    assert parse_config([arg.format(path=path) for arg in argv]).epochs == 35


def test_negative_switch_wins_over_yaml_true(tmp_path):
    path = write(tmp_path, "cpu: true\nema: true\n")
    cfg = parse_config(["--config", str(path), "--no-cpu"])
    assert (cfg.cpu, cfg.ema) == (False, True)


def test_yaml_keys_may_use_dashes(tmp_path):
    path = write(tmp_path, "batch-size: 64\nweight-decay: 0.001\nnum_workers: 0\n")
    cfg = parse_config(["--config", str(path)])
    assert (cfg.batch_size, cfg.weight_decay, cfg.num_workers) == (64, 0.001, 0)


def test_unknown_yaml_key_is_named_and_the_valid_keys_listed(tmp_path):
    message = error_of(["--config", str(write(tmp_path, "epochs: 3\nepochz: 3\n"))])
    assert "epochz" in message
    assert all(name in message for name in ("epochs", "batch_size", "wandb_tags", "lr"))


def test_empty_yaml_changes_nothing(tmp_path):
    assert parse_config(["--config", str(write(tmp_path, ""))]) == TrainConfig()


@pytest.mark.parametrize("text, fragment", [("- epochs\n- 3\n", "mapping"), ("epochs: [3\n", "not valid YAML")])
def test_yaml_that_is_not_a_mapping_of_settings_is_rejected(tmp_path, text, fragment):
    assert fragment in error_of(["--config", str(write(tmp_path, text))])


def test_missing_yaml_file_is_a_config_error_naming_it(tmp_path):
    missing = tmp_path / "nowhere.yaml"
    assert str(missing) in error_of(["--config", str(missing)])


def test_wandb_tags_from_a_yaml_list_or_a_comma_separated_flag_are_a_tuple(tmp_path):
    from_yaml = parse_config(["--config", str(write(tmp_path, "wandb_tags: [a, b]\n"))])
    from_flag = parse_config(["--wandb-tags", "a, b,"])
    assert from_yaml.wandb_tags == from_flag.wandb_tags == ("a", "b")
    assert load_yaml(tmp_path / "settings.yaml")["wandb_tags"] == ("a", "b")


def test_yaml_reads_exponent_floats_written_without_a_dot(tmp_path):
    cfg = parse_config(["--config", str(write(tmp_path, "lr: 1e-3\nweight_decay: 5e-4\n"))])
    assert (cfg.lr, cfg.weight_decay) == (0.001, 0.0005)


def test_scheduler_params_from_a_yaml_mapping_or_a_flag_are_the_same(tmp_path):
    text = "scheduler: step\nscheduler_params: {milestones: [0.5], gamma: 1e-1}\n"
    from_yaml = parse_config(["--config", str(write(tmp_path, text))])
    from_flag = parse_config(["--scheduler", "step", "--scheduler-params", "{milestones: [0.5], gamma: 0.1}"])
    assert from_yaml.scheduler_params == from_flag.scheduler_params == {"milestones": [0.5], "gamma": 0.1}
    assert TrainConfig().scheduler_params == {} and TrainConfig().scheduler_params is not TrainConfig().scheduler_params


@pytest.mark.parametrize("argv, fragments", [
    (["--scheduler-params", "{gamma: 0.1}"], ["--scheduler-params {'gamma': 0.1}", "--scheduler onecycle",
                                              "unknown parameter(s) gamma", "final_div_factor (default 10000.0)"]),
    (["--scheduler", "step", "--scheduler-params", "{milestones: [0.75, 0.5]}"],
     ["--scheduler step", "milestones must be increasing fractions of the run in (0, 1); got [0.75, 0.5]"]),
])
def test_scheduler_params_the_schedule_rejects_are_a_config_error(argv, fragments):
    message = error_of(argv)
    assert all(fragment in message for fragment in fragments), message


@pytest.mark.parametrize("value", ["[0.5]", "{a: [", "3"])
def test_scheduler_params_flag_that_is_not_a_mapping_exits_with_status_2(value, capsys):
    with pytest.raises(SystemExit) as exited:
        parse_config(["--scheduler-params", value])
    assert exited.value.code == 2
    assert "--scheduler-params" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- validation


INVALID_VALUES = [
    (["--model", "resnet9000"], ["--model 'resnet9000'", "c4net", "c4net_tiny"]),
    (["--optimizer", "adam"], ["--optimizer 'adam'", "sgd", "adamw"]),
    (["--scheduler", "linear"], ["--scheduler 'linear'", "onecycle", "cosine"]),
    (["--mixed-precision", "fp8"], ["--mixed-precision 'fp8'", "auto", "fp16", "bf16"]),
    (["--epochs", "0"], ["--epochs 0", "positive integer"]),
    (["--batch-size", "-1"], ["--batch-size -1", "positive integer"]),
    (["--lr", "0"], ["--lr 0.0", "positive"]),
    (["--lr", "nan"], ["--lr nan", "finite"]),
    (["--weight-decay", "-1"], ["--weight-decay -1.0", ">= 0"]),
    (["--subset", "0"], ["--subset 0", "positive"]),
    (["--batch-size", "100", "--grad-accum", "3"], ["--batch-size 100", "multiple of --grad-accum 3"]),
    (["--resume", "auto"], ["--resume auto", "--output-dir"]),
    (["--augment-fade-from", "1"], ["--augment-fade-from 1.0", "[0, 1)"]),
]


@pytest.mark.parametrize("argv, fragments", INVALID_VALUES, ids=[" ".join(argv) for argv, _ in INVALID_VALUES])
def test_invalid_value_is_quoted_with_what_is_allowed(argv, fragments):
    message = error_of(argv)
    assert [fragment for fragment in fragments if fragment not in message] == []


@pytest.mark.parametrize("text, fragments", [
    ('epochs: "ten"\n', ["--epochs 'ten'", "an integer"]),
    ("epochs: 5.5\n", ["--epochs 5.5", "an integer"]),
    ("epochs: true\n", ["--epochs True", "an integer"]),
    ('lr: "fast"\n', ["--lr 'fast'", "a number"]),
    ('cpu: "yes"\n', ["--cpu 'yes'", "true or false"]),
    ("wandb_tags: a,b\n", ["--wandb-tags 'a,b'", "list of strings"]),
])
def test_wrong_type_from_yaml_is_quoted_with_the_expected_type(tmp_path, text, fragments):
    message = error_of(["--config", str(write(tmp_path, text))])
    assert [fragment for fragment in fragments if fragment not in message] == []


def test_invalid_choice_reads_the_same_from_yaml_and_from_a_flag(tmp_path):
    from_yaml = error_of(["--config", str(write(tmp_path, "optimizer: adam\n"))])
    assert from_yaml == error_of(["--optimizer", "adam"])


def test_resume_auto_is_accepted_once_the_output_dir_is_given(tmp_path):
    cfg = parse_config(["--config", str(write(tmp_path, "output_dir: runs/a\n")), "--resume", "auto"])
    assert (cfg.resume, cfg.output_dir) == ("auto", "runs/a")


# ---------------------------------------------------------------------------------------------- saved configs


def test_saved_yaml_reads_back_to_an_equal_config(tmp_path):
    cfg = TrainConfig(model="c4net_tiny", epochs=3, batch_size=96, grad_accum=3, lr=1e-5, weight_decay=1e-5,
                      optimizer="adamw", nesterov=False, subset=500, val_size=100, cpu=True, ema=True,
                      resume="auto", output_dir=str(tmp_path / "run"), wandb_tags=("x", "y z"),
                      wandb_group="g", scheduler="step",
                      scheduler_params={"milestones": [0.3, 0.6], "gamma": 0.2}).resolved("bf16", "albumentations",
                                                                                       2, FIXED_TIME)
    path = tmp_path / "config.yaml"
    save_yaml(cfg, path)
    assert parse_config(["--config", str(path)]) == cfg


def test_resolved_names_a_timestamped_output_dir_and_sets_what_the_machine_decides():
    cfg = TrainConfig(model="c4net_tiny")
    resolved = cfg.resolved("bf16", "albumentations", 3, FIXED_TIME)
    assert resolved.output_dir == str(Path("runs") / "c4net_tiny-20240102-030405")
    assert (resolved.mixed_precision, resolved.augment_backend, resolved.num_workers) == ("bf16", "albumentations", 3)
    assert dataclasses.replace(resolved, output_dir=None, mixed_precision="auto", augment_backend="auto",
                               num_workers=None) == cfg
    assert re.fullmatch(r"runs/c4net_tiny-\d{8}-\d{6}", Path(cfg.resolved("no", "torch", 0).output_dir).as_posix())


def test_resolved_keeps_an_explicit_output_dir():
    resolved = TrainConfig(output_dir="somewhere/run1").resolved("no", "torch", 0, FIXED_TIME)
    assert resolved.output_dir == "somewhere/run1"


def test_trajectory_differences_name_changed_trajectory_settings():
    saved = TrainConfig(model="c4net", lr=0.2).to_dict()
    differences = trajectory_differences(saved, TrainConfig(model="c4net_tiny", lr=0.1))
    assert len(differences) == 2
    assert any("--lr" in line and "0.2" in line and "0.1" in line for line in differences)
    assert any("--model" in line and "'c4net'" in line and "'c4net_tiny'" in line for line in differences)


def test_a_checkpoint_from_before_augment_backend_existed_counts_as_albumentations():
    saved = TrainConfig().to_dict()
    del saved["augment_backend"]
    assert trajectory_differences(saved, TrainConfig().resolved("no", "albumentations", 1)) == []
    [difference] = trajectory_differences(saved, TrainConfig().resolved("no", "torch", 0))
    assert "--augment-backend" in difference and "'albumentations' in the checkpoint, 'torch' now" in difference


def test_a_checkpoint_from_before_scheduler_params_existed_counts_as_the_defaults():
    saved = TrainConfig().to_dict()
    del saved["scheduler_params"]
    assert trajectory_differences(saved, TrainConfig()) == []
    [difference] = trajectory_differences(saved, TrainConfig(scheduler_params={"final_div_factor": 1e3}))
    assert "--scheduler-params: {} in the checkpoint, {'final_div_factor': 1000.0} now" in difference


def test_a_checkpoint_from_before_augment_fade_from_existed_had_a_constant_pipeline():
    saved = TrainConfig().to_dict()
    del saved["augment_fade_from"]
    assert trajectory_differences(saved, TrainConfig()) == []
    [difference] = trajectory_differences(saved, TrainConfig(augment_fade_from=0.5))
    assert "--augment-fade-from: None in the checkpoint, 0.5 now" in difference


def test_trajectory_differences_ignore_paths_workers_and_logging():
    saved = TrainConfig(output_dir="runs/a").to_dict()
    now = TrainConfig(output_dir="runs/b", num_workers=0, wandb=True, wandb_project="other", wandb_group="g",
                      wandb_name="n", wandb_tags=("t",), log_every=1, keep_last=5, checkpoint_every=0,
                      data_dir="/elsewhere")
    assert trajectory_differences(saved, now) == []


def test_yaml_key_given_in_both_spellings_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "both.yaml"
    path.write_text("batch-size: 64\nbatch_size: 32\n")
    with pytest.raises(ConfigError, match="'batch_size' twice"):
        parse_config(["--config", str(path)])


def test_flags_cannot_be_abbreviated() -> None:
    # An abbreviation that works today would silently change meaning when a longer flag is added.
    with pytest.raises(SystemExit) as exited:
        parse_config(["--epoch", "3"])
    assert exited.value.code == 2


def test_config_flags_rebuild_a_saved_config_from_its_non_default_values() -> None:
    config = TrainConfig(epochs=10, cpu=True, nesterov=False, wandb_tags=("a", "b"), lr=5e-4, output_dir="runs/x",
                         seed=3, scheduler_params={"final_div_factor": 1e3, "pct_start": 0.25})
    saved = config.to_dict()
    flags = config_flags(saved, leave_out=("output_dir",))
    assert flags == ["--epochs", "10", "--lr", "0.0005", "--no-nesterov", "--scheduler-params",
                     "{final_div_factor: 1000.0, pct_start: 0.25}", "--seed", "3", "--cpu", "--wandb-tags", "a,b"]
    assert parse_config(flags) == dataclasses.replace(config, output_dir=None)
    # Settings an older config.yaml lacks are left out rather than invented.
    del saved["epochs"]
    assert "--epochs" not in config_flags(saved)


def test_num_workers_defaults_to_the_machine_rule_and_takes_any_count_from_zero() -> None:
    assert TrainConfig().num_workers is None
    assert parse_config(["--num-workers", "0"]).num_workers == 0
    assert "--num-workers -1 is not valid" in error_of(["--num-workers", "-1"])

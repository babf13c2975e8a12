"""The recipe presets in recipes/: each loads as a training config, names its own net and an existing augmentation
preset, sets every setting of a recipe itself, and says on each line where its value comes from. An as-run
recipe (NET_as_run.yaml) differs from its net's as-written recipe only where the write-up's log shows what ran."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from cifar.augment import AUGMENT_PRESETS
from cifar.config import load_yaml, parse_config
from cifar.nets import list_nets
from cifar.schedulers import schedule_lr

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"
RECIPES = sorted(RECIPES_DIR.glob("*.yaml"))
SEED_NETS = [f"seed00{i}" for i in range(5)]

# What a recipe must set itself rather than inherit from the trainer's defaults (which are tuned for c4net:
# batch 512, Nesterov, lr 0.2), so that each value is one the recipe states and comments.
RECIPE_KEYS = ("model", "epochs", "batch_size", "optimizer", "lr", "momentum", "nesterov", "weight_decay",
               "scheduler", "scheduler_params", "label_smoothing", "augment")

# A YAML comment starts with '#' at the line's start or after whitespace.
_COMMENT = re.compile(r"(^|\s)#")


def uncommented_lines(text: str) -> list[str]:
    """The non-blank, non-comment lines of a YAML text that carry no trailing comment."""
    return [line for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#") and not _COMMENT.search(line)]


def test_every_seed_net_has_a_recipe():
    assert [name for name in SEED_NETS if not (RECIPES_DIR / f"{name}.yaml").is_file()] == []


@pytest.mark.parametrize("path", RECIPES, ids=[path.stem for path in RECIPES])
def test_recipe_loads_and_names_its_net_and_an_augment_preset(path: Path):
    cfg = parse_config(["--config", str(path)])
    assert path.stem in (cfg.model, f"{cfg.model}_as_run")
    assert cfg.model in list_nets()
    assert cfg.augment in AUGMENT_PRESETS


@pytest.mark.parametrize("path", RECIPES, ids=[path.stem for path in RECIPES])
def test_recipe_sets_every_recipe_setting_itself(path: Path):
    assert [key for key in RECIPE_KEYS if key not in load_yaml(path)] == []


@pytest.mark.parametrize("path", RECIPES, ids=[path.stem for path in RECIPES])
def test_every_setting_of_a_recipe_is_commented(path: Path):
    assert uncommented_lines(path.read_text()) == []


def test_uncommented_lines_finds_a_setting_without_its_comment():
    text = "# about the run\nepochs: 30  # l.89\n\nlr: 0.02\nmodel: seed002 # l.96\naugment: 'a#b'\n"
    assert uncommented_lines(text) == ["lr: 0.02", "augment: 'a#b'"]


# End-of-epoch learning rates as the write-ups log them, rounded to 6 decimals: after epoch k the scheduler has
# stepped k * steps_per_epoch times. seed002 (l.165-194: 391 batches of 128), seed003 (l.286-300: 781 batches
# of 64, the last partial batch dropped).
SEED002_LOGGED = {1: 0.001379, 2: 0.003047, 8: 0.019424, 9: 0.020000, 10: 0.019888, 20: 0.009249, 28: 0.000444,
                  29: 0.000112, 30: 0.000001}
LOGGED_LRS = {
    "seed002": (391, SEED002_LOGGED),
    "seed002_as_run": (391, SEED002_LOGGED),
    "seed003": (781, {1: 0.007525, 2: 0.005050, 3: 0.002575, 4: 0.010000, 5: 0.002575, 6: 0.005050,
                      7: 0.007525, 8: 0.000100}),
}


@pytest.mark.parametrize("name", sorted(LOGGED_LRS))
def test_recipe_schedule_reproduces_the_logged_learning_rates(name: str):
    cfg = parse_config(["--config", str(RECIPES_DIR / f"{name}.yaml")])
    steps_per_epoch, logged = LOGGED_LRS[name]
    total = cfg.epochs * steps_per_epoch
    ours = {epoch: round(schedule_lr(cfg.scheduler, epoch * steps_per_epoch, total, cfg.lr, **cfg.scheduler_params), 6)
            for epoch in logged}
    assert ours == logged


# What each as-run recipe changes in its net's as-written recipe, and nothing else (their comments say why).
AS_RUN_CHANGES = {"seed002_as_run": {"augment"}, "seed004_as_run": {"optimizer"}}


def test_as_run_recipes_change_only_what_the_logs_show():
    as_run = sorted(path.stem for path in RECIPES if path.stem.endswith("_as_run"))
    assert as_run == sorted(AS_RUN_CHANGES)
    for name, expected in AS_RUN_CHANGES.items():
        ran, written = (load_yaml(RECIPES_DIR / f"{stem}.yaml") for stem in (name, name.removesuffix("_as_run")))
        assert set(ran) == set(written), name
        assert {key for key in ran if ran[key] != written[key]} == expected, name


# seed004's log (l.175-355): test accuracy after epochs 1-31 of its 100-epoch run.
SEED004_TEST_ACCURACY = (47.16, 58.03, 64.58, 66.85, 70.31, 73.76, 74.98, 75.95, 76.93, 78.00, 78.59, 80.19, 79.61,
                         80.42, 80.51, 81.58, 81.80, 82.47, 82.41, 82.73, 82.53, 83.28, 83.09, 82.68, 84.79, 84.93,
                         85.16, 85.25, 85.10, 85.52, 85.44)


@pytest.mark.parametrize("unit", [1.0, 100.0], ids=["percent", "fraction"])
def test_seed004_as_run_has_the_lr_the_author_s_plateau_scheduler_gives_its_log(unit: float):
    """The author's ReduceLROnPlateau (recipes/seed004_as_run.yaml says which), stepped on the logged test
    accuracies, in either unit: the LR of each of the 30 epochs is what the recipe's step schedule sets."""
    cfg = parse_config(["--config", str(RECIPES_DIR / "seed004_as_run.yaml")])
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.lr, momentum=cfg.momentum)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, "max", patience=1, threshold=0.001,
                                                         threshold_mode="abs", eps=0.001)
    theirs = []
    for accuracy in SEED004_TEST_ACCURACY:
        theirs.append(optimizer.param_groups[0]["lr"])
        plateau.step(accuracy / unit)
    steps_per_epoch = 391
    total = cfg.epochs * steps_per_epoch
    ours = [schedule_lr(cfg.scheduler, epoch * steps_per_epoch, total, cfg.lr, **cfg.scheduler_params)
            for epoch in range(cfg.epochs)]
    assert ours == pytest.approx(theirs[:cfg.epochs], rel=1e-12)
    assert theirs == [0.01] * 24 + [pytest.approx(0.001)] * 7  # one drop, before epoch 25, none after

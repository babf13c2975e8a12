"""Results you can check: test-time augmentation, shipping a run to results/, replaying its last epoch bit for bit,
pretrained weights by name, and the documentation's tables generated from results/.

The fast tests build run folders by hand; the slow ones train a 2-epoch run of the tiny net with train.py and take
it through ship, --eval-only (1 and 2 processes) and cifar.replay, a tampered copy included.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from cifar import checkpoint as ckpt
from cifar import results
from cifar.aggregate import (LAYOUTS, RunFolderError, TableSection, markdown_table, main, pages_with_tables,
                             read_run, section_body, section_folders, table_sections, update_tables)
from cifar.config import TrainConfig
from cifar.nets import net_description
from cifar.pretrained import build_net
from cifar.replay import ReplayPlan, compare_weights, plan_replay, replay_command
from cifar.tta import tta_logits, tta_views

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


# ---------------------------------------------------------------- test-time augmentation


class MirrorBlind(nn.Module):
    """Logits from each channel's mean: the same for an image and its mirror."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 10)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.linear(images.mean((2, 3)))


class LeftColumn(nn.Module):
    """Logits from the leftmost pixel column only: a mirror sees the other edge."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3 * 8, 10)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.linear(images[..., 0].flatten(1))


def test_flip_tta_of_a_net_blind_to_mirroring_changes_nothing() -> None:
    torch.manual_seed(0)
    net, images = MirrorBlind().eval(), torch.randn(16, 3, 8, 8)
    with torch.no_grad():
        plain, flipped = net(images), tta_logits(net, images, "flip")
    torch.testing.assert_close(flipped, plain)
    assert torch.equal(flipped.argmax(1), plain.argmax(1))


def test_tta_averages_the_logits_of_its_views() -> None:
    torch.manual_seed(0)
    net, images = LeftColumn().eval(), torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        expected = (net(images) + net(images.flip(-1))) / 2
        torch.testing.assert_close(tta_logits(net, images, "flip"), expected)
        assert not torch.allclose(expected, net(images))  # else this net would not tell TTA from no TTA
        six = tta_views(images, "flip_translate")
        torch.testing.assert_close(tta_logits(net, images, "flip_translate"),
                                   torch.stack([net(view) for view in six]).mean(0))


def test_translate_views_shift_by_one_pixel_with_reflected_borders() -> None:
    images = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).reshape(2, 3, 5, 5)
    views = tta_views(images, "flip_translate")
    assert len(views) == 6 and all(view.shape == images.shape for view in views)
    assert torch.equal(views[0], images) and torch.equal(views[1], images.flip(-1))
    down_right, up_left = views[2], views[4]
    assert torch.equal(down_right[..., 1:, 1:], images[..., :-1, :-1])  # content moved one pixel down-right
    assert torch.equal(down_right[..., 0, 1:], images[..., 1, :-1])     # the border row reflected
    assert torch.equal(up_left[..., :-1, :-1], images[..., 1:, 1:])
    assert torch.equal(views[3], down_right.flip(-1)) and torch.equal(views[5], up_left.flip(-1))
    with pytest.raises(ValueError, match="'rotate'.*flip, flip_translate"):
        tta_views(images, "rotate")


# ---------------------------------------------------------------- run folders made by hand


def make_run(folder: Path, model: str = "c4net_tiny", seed: int = 0, test_acc: float = 0.5, epochs: int = 2,
             **summary: object) -> Path:
    """A folder laid out as a finished train.py run: real weights of ``model``, a checkpoint at the start of the
    last epoch (step 7), plots, and what a shipped result must leave behind (other checkpoints, W&B files)."""
    torch.manual_seed(seed)
    net = build_net(model)
    config = TrainConfig(model=model, epochs=epochs, seed=seed, cpu=True, mixed_precision="no",
                         output_dir=str(folder)).to_dict()
    (folder / "plots").mkdir(parents=True)
    (folder / "plots" / "loss.png").write_bytes(b"\x89PNG")
    (folder / "wandb").mkdir()
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (folder / "metrics.jsonl").write_text(json.dumps({"epoch": epochs, "test_acc": test_acc}) + "\n")
    metadata = {"model": model, **ckpt.input_metadata([0.5] * 3, [0.25] * 3, CLASSES)}
    ckpt.save_weights(ckpt.plain_state_dict(net), folder / "model.safetensors", metadata)
    for step in (7, 14):
        ckpt.write_checkpoint(folder / "checkpoints", step, {"model": ckpt.plain_state_dict(net)},
                              {"model": model, "step": step, "config": config})
    (folder / "summary.json").write_text(json.dumps({
        "model": model, "seed": seed, "test_acc": test_acc, "test_acc_tta": test_acc + 0.01,
        "test_acc_tta_translate": test_acc + 0.02, "epochs": epochs, "train_seconds": 100.0 + seed,
        "params": 3858, "hardware": "2 process(es) on CPU (2 cores), MULTI_CPU, mixed precision no, torch 2.x",
        "device": "cpu", "processes": 2, "threads": 1, "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(), "last_epoch_start": "step-000000007",
        **summary}))
    return folder


def test_ship_copies_the_run_without_checkpoints_plus_the_last_epoch_start(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    copied = results.ship_run(run, tmp_path / "results" / "tiny")
    shipped = tmp_path / "results" / "tiny"
    assert sorted(path.name for path in shipped.iterdir()) == sorted(
        ["config.yaml", "metrics.jsonl", "summary.json", "model.safetensors", "plots", "last_epoch_start"])
    assert set(copied) == {"config.yaml", "metrics.jsonl", "summary.json", "model.safetensors", "plots/",
                           "last_epoch_start/"}
    assert (shipped / "model.safetensors").read_bytes() == (run / "model.safetensors").read_bytes()
    assert ckpt.verify_checkpoint(shipped / "last_epoch_start")["step"] == 7
    assert [entry.name for entry in shipped.parent.iterdir()] == ["tiny"]  # no temporary folder left behind


def test_ship_refuses_what_it_cannot_ship_naming_the_fix(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    (tmp_path / "existing").mkdir()
    with pytest.raises(results.ResultError, match="already exists"):
        results.ship_run(run, tmp_path / "existing")
    unfinished = make_run(tmp_path / "unfinished")
    (unfinished / "summary.json").unlink()
    with pytest.raises(results.ResultError, match="no finished run.*--resume auto"):
        results.ship_run(unfinished, tmp_path / "a")
    old = make_run(tmp_path / "old", last_epoch_start=None)
    with pytest.raises(results.ResultError, match="--without-replay"):
        results.ship_run(old, tmp_path / "b")
    assert "last_epoch_start/" not in results.ship_run(old, tmp_path / "b", replayable=False)
    pruned = make_run(tmp_path / "pruned")
    shutil.rmtree(pruned / "checkpoints" / "step-000000007")
    with pytest.raises(results.ResultError, match="step-000000007.*--without-replay"):
        results.ship_run(pruned, tmp_path / "c")
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()
    done = subprocess.run([sys.executable, "-m", "cifar.results", "ship", str(unfinished), str(tmp_path / "d")],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.startswith("error: ") and "no summary.json" in done.stderr


# ---------------------------------------------------------------- pretrained weights by name


def test_build_net_loads_weights_from_a_file_a_folder_or_a_shipped_name(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    run = make_run(tmp_path / "run", seed=5)
    expected = ckpt.load_weights(run / "model.safetensors")[0]
    monkeypatch.setattr(results, "RESULTS_DIR", tmp_path / "results")
    results.ship_run(run, tmp_path / "results" / "tiny-seed5")
    for weights in (run / "checkpoints" / "step-000000014", run, tmp_path / "results" / "tiny-seed5", "tiny-seed5",
                    run / "model.safetensors"):
        net = build_net("c4net_tiny", weights=weights)
        assert all(torch.equal(value, expected[key]) for key, value in net.state_dict().items()), weights
    assert net.pretrained_cfg["mean"] == [0.5] * 3 and net.pretrained_cfg["classes"] == CLASSES
    assert not hasattr(build_net("c4net_tiny"), "pretrained_cfg")


def test_build_net_with_wrong_weights_says_what_they_are(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = make_run(tmp_path / "run")
    with pytest.raises(ckpt.CheckpointError, match=r"hold net 'c4net_tiny', not 'c4net': build_net\('c4net_tiny'"):
        build_net("c4net", weights=run)
    with pytest.raises(ckpt.CheckpointError, match="classify 10 classes.*num_classes"):
        build_net("c4net_tiny", num_classes=5, weights=run)
    monkeypatch.setattr(results, "RESULTS_DIR", tmp_path / "results")
    with pytest.raises(ckpt.CheckpointError, match="'nope'.*none is shipped yet"):
        build_net("c4net_tiny", weights="nope")
    results.ship_run(run, tmp_path / "results" / "tiny")
    with pytest.raises(ckpt.CheckpointError, match="'nope'.*shipped: tiny"):
        build_net("c4net_tiny", weights="nope")


# ---------------------------------------------------------------- replay, without training


def test_replay_repeats_the_processes_and_threads_of_the_original_run(tmp_path: Path) -> None:
    shipped = tmp_path / "results" / "tiny"
    results.ship_run(make_run(tmp_path / "run"), shipped)
    plan = plan_replay(shipped)
    assert (plan.processes, plan.threads, plan.step, plan.epochs) == (2, 1, 7, 2)
    command = replay_command(plan, tmp_path / "out", data_dir=tmp_path / "data")
    assert command[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert command[command.index("--num_processes") + 1] == "2"
    assert command[command.index("--num_cpu_threads_per_process") + 1] == "1"
    train_args = command[command.index(str(ROOT / "train.py")) + 1:]
    assert train_args[train_args.index("--resume") + 1] == str(shipped / "last_epoch_start")
    assert train_args[train_args.index("--config") + 1] == str(shipped / "config.yaml")
    assert {"--no-wandb", "--no-download"} <= set(train_args)
    one = ReplayPlan(**{**plan.__dict__, "processes": 1})
    assert replay_command(one, tmp_path / "out")[:2] == [sys.executable, str(ROOT / "train.py")]


def test_replay_refuses_runs_outside_its_promise(tmp_path: Path) -> None:
    gpu = tmp_path / "gpu"
    results.ship_run(make_run(tmp_path / "run-gpu", device="cuda"), gpu)
    with pytest.raises(results.ResultError, match="trained on cuda.*CPU in fp32"):
        plan_replay(gpu)
    old = tmp_path / "old"
    results.ship_run(make_run(tmp_path / "run-old"), old)
    summary = json.loads((old / "summary.json").read_text())
    del summary["threads"]  # as an older train.py wrote it
    (old / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(results.ResultError, match="does not record threads"):
        plan_replay(old)
    unreplayable = tmp_path / "unreplayable"
    results.ship_run(make_run(tmp_path / "run-3", last_epoch_start=None), unreplayable, replayable=False)
    with pytest.raises(results.ResultError, match="no last_epoch_start/"):
        plan_replay(unreplayable)


def test_weight_comparison_finds_a_single_flipped_bit(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    weights, metadata = ckpt.load_weights(run / "model.safetensors")
    ckpt.save_weights(weights, tmp_path / "same.safetensors", {})  # metadata does not count, tensors do
    same = compare_weights(run / "model.safetensors", tmp_path / "same.safetensors")
    assert same.equal and same.tensors == len(weights) and same.lines() == []
    name = sorted(weights)[0]
    weights[name].view(-1).view(torch.int32)[0] ^= 1
    ckpt.save_weights(weights, tmp_path / "tampered.safetensors", metadata)
    tampered = compare_weights(run / "model.safetensors", tmp_path / "tampered.safetensors")
    assert tampered.tensors == len(weights) and not tampered.equal and not tampered.mismatches
    [line] = tampered.lines()
    assert line.startswith(f"{name}: 1 of ")


# ---------------------------------------------------------------- generated tables in the docs


def test_markdown_table_has_one_row_per_recipe_with_mean_and_std(tmp_path: Path) -> None:
    seeds = [read_run(make_run(tmp_path / "results" / f"c4net_tiny-2ep-seed{s}", seed=s, test_acc=acc))
             for s, acc in [(0, 0.80), (1, 0.82), (2, 0.84)]]
    short = read_run(make_run(tmp_path / "results" / "c4net_tiny-1ep", epochs=1, test_acc=0.7))
    table = markdown_table([*seeds, short], tmp_path).splitlines()
    assert len(table) == 4 and table[0].startswith("| model | params | epochs | seeds | test acc (final epoch) |")
    cells = [cell.strip() for cell in table[2].strip("|").split("|")]
    assert cells[:4] == ["c4net_tiny", "3,858", "2", "[0](results/c4net_tiny-2ep-seed0), "
                         "[1](results/c4net_tiny-2ep-seed1), [2](results/c4net_tiny-2ep-seed2)"]
    assert cells[4:7] == ["82.00% ± 2.00%", "83.00% ± 2.00%", "84.00% ± 2.00%"]
    assert cells[7].endswith("torch 2.x, 1 thread(s) per process") and cells[8] == "101 s ± 1 s"
    assert cells[9] == ("`OMP_NUM_THREADS=1 accelerate launch --multi_gpu --num_processes 2 train.py --model "
                        "c4net_tiny --epochs 2 --mixed-precision no --cpu --seed <seed>`")
    one = [cell.strip() for cell in table[3].strip("|").split("|")]
    assert one[2] == "1" and one[4] == "70.00%" and "--seed" not in one[9]


def test_training_time_and_its_spread_share_one_unit(tmp_path: Path) -> None:
    runs = [read_run(make_run(tmp_path / "results" / f"c4net_tiny-2ep-seed{seed}", seed=seed, train_seconds=seconds))
            for seed, seconds in [(0, 3600.0), (1, 4200.0)]]
    [row] = markdown_table(runs, tmp_path).splitlines()[2:]
    # 3,900 s ± 424 s: minutes for both, never "65 min ± 424 s".
    assert "| 65 min ± 7 min |" in row, row


def test_plot_draws_finished_and_running_folders_and_names_a_folder_without_epochs(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    finished = make_run(tmp_path / "finished", epochs=1)
    (finished / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "train_acc": 0.4, "test_acc": 0.5}) + "\n")
    running = tmp_path / "running"
    running.mkdir()
    (running / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "train_acc": 0.3, "val_acc": 0.35}) + "\n")
    plot = tmp_path / "curves.png"
    assert main([str(finished), str(running), "--plot", str(plot)]) == 0
    assert plot.read_bytes()[:4] == b"\x89PNG" and f"wrote {plot}" in capsys.readouterr().out
    assert main([str(running), "--plot", str(plot)]) == 0  # a running folder alone is plotted, not an error
    empty = tmp_path / "started"
    empty.mkdir()
    (empty / "metrics.jsonl").write_text("")
    assert main([str(running), str(empty), "--plot", str(tmp_path / "other.png")]) == 2
    assert "started/metrics.jsonl: no epoch has ended yet" in capsys.readouterr().err
    assert not (tmp_path / "other.png").exists()


def test_claims_layout_sets_a_seed_net_beside_its_write_up_with_its_best_epoch(tmp_path: Path) -> None:
    literal = make_run(tmp_path / "results" / "seed000-30ep-seed0", model="seed000", test_acc=0.80, epochs=3,
                       receptive_field=29, macs=44_140_000,
                       constraints={"params_lt_200k": True, "rf_gt_44": False, "gap": True})
    # Test accuracy by epoch: the best (0.83, epoch 2) is not the final one (0.80).
    (literal / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e, "test_acc": a}) + "\n"
                                                   for e, a in [(1, 0.7), (2, 0.83), (3, 0.80)]))
    ours = make_run(tmp_path / "results" / "c4net_tiny-3ep-seed0", epochs=3, test_acc=0.9, receptive_field=153,
                    constraints={"params_lt_200k": True, "rf_gt_44": True})
    table = markdown_table([read_run(literal), read_run(ours)], tmp_path, layout="claims").splitlines()
    assert table[0] == ("| model | params | RF | MMACs | constraints | write-up's claim | epochs | seeds | "
                        "test acc (final epoch) | test acc (best epoch) | hardware | training time | command |")
    seed = dict(zip(LAYOUTS["claims"], (cell.strip() for cell in table[2].strip("|").split("|"))))
    assert (seed["RF"], seed["MMACs"], seed["constraints"]) == ("29", "44.1", "**fails rf_gt_44**")
    assert seed["write-up's claim"].startswith("88.93%, best of 30 epochs")
    assert (seed["test acc (final epoch)"], seed["test acc (best epoch)"]) == ("80.00%", "83.00%")
    default = dict(zip(LAYOUTS["claims"], (cell.strip() for cell in table[3].strip("|").split("|"))))
    assert (default["constraints"], default["write-up's claim"], default["MMACs"]) == ("all met", "-", "-")
    with pytest.raises(ValueError, match="unknown table layout 'wide'; valid: recipes, claims, search"):
        markdown_table([read_run(ours)], tmp_path, layout="wide")


def test_search_layout_logs_each_run_with_its_recipe_last_epoch_and_speed(tmp_path: Path) -> None:
    def search_run(name: str, images_per_second: list[float], model: str = "c4net_tiny", **changes: object) -> Path:
        folder = make_run(tmp_path / "search" / name, model=model, epochs=3, test_acc=0.80)
        config = {**yaml.safe_load((folder / "config.yaml").read_text()), "val_size": 5000, **changes}
        (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        rows = [{"epoch": epoch, "train_acc": 0.5 + epoch / 10, "val_acc": 0.6 + epoch / 10, "test_acc": 0.8,
                 **({"images_per_second": speed} if speed else {})}
                for epoch, speed in enumerate(images_per_second, start=1)]
        (folder / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
        return folder

    base = search_run("n3-base", [100.0, 200.0, 900.0])
    faster = search_run("n3-lr02", [300.0, 500.0, 400.0], lr=0.2, augment_backend="albumentations")
    unlogged = search_run("n3-old", [0, 0, 0], model="c4next_tiny")
    table = markdown_table([read_run(base), read_run(faster), read_run(unlogged)], tmp_path, layout="search")
    header, _, *rows = table.splitlines()
    assert header == ("| run | net | recipe | params | MMACs | val acc (final epoch) | augmented train acc (final "
                      "epoch) | test acc (final epoch) | img/s: epoch 1, median |")
    cells = [dict(zip(LAYOUTS["search"], (cell.strip() for cell in row.strip("|").split("|")))) for row in rows]
    assert cells[0]["run"] == "[n3-base](search/n3-base)"
    assert cells[0]["net"] == f"`c4net_tiny`: {net_description('c4net_tiny')}" and cells[1]["net"] == "`c4net_tiny`"
    # The protocol's settings (the validation split, the backend the device picked) and the non-trajectory ones
    # (--cpu, --mixed-precision) are not the recipe: only what a search varies is.
    assert (cells[0]["recipe"], cells[1]["recipe"]) == ("default", "`--lr 0.2`")
    assert [cells[0][column] for column in LAYOUTS["search"][5:]] == ["90.00%", "80.00%", "80.00%", "100, 200"]
    assert cells[1]["img/s: epoch 1, median"] == "300, 400"
    assert cells[2]["img/s: epoch 1, median"] == "-" and cells[2]["net"].startswith("`c4next_tiny`: c4next, ")


def test_a_table_marker_may_name_its_layout(tmp_path: Path) -> None:
    make_run(tmp_path / "results" / "seed000-2ep-seed0", model="seed000")
    text = "<!-- table:seeds layout=claims results/seed* -->\nold\n<!-- /table:seeds -->\n"
    [section] = table_sections(text)
    assert (section.layout, section.patterns) == ("claims", ("results/seed*",))
    assert "write-up's claim" in section_body(section, tmp_path).splitlines()[0]
    assert table_sections(text.replace("layout=claims ", ""))[0].layout == "recipes"


def test_update_tables_replaces_only_the_marked_table(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- table:tiny results/tiny-* -->\nold text\n<!-- /table:tiny -->\n"
                      "<!-- table:other results/other-* -->\nkept\n<!-- /table:other -->\nend\n")
    assert update_tables(readme, "tiny") == ["tiny"]
    text = readme.read_text()
    assert "_No finished run matches `results/tiny-*` yet._\n<!-- /table:tiny -->" in text and "kept\n" in text
    make_run(tmp_path / "results" / "tiny-seed0")
    assert update_tables(readme) == ["tiny", "other"]
    tiny = table_sections(readme.read_text())[0]
    assert tiny.body == section_body(tiny, tmp_path) and "[0](results/tiny-seed0)" in tiny.body
    assert update_tables(readme) == []  # generated text is stable
    with pytest.raises(RunFolderError, match="no table 'nope'.*tiny, other"):
        update_tables(readme, "nope")
    (tmp_path / "results" / "tiny-broken").mkdir()
    with pytest.raises(RunFolderError, match="tiny-broken: no summary.json"):
        update_tables(readme)


def test_update_docs_updates_every_page_with_a_table_its_links_relative_to_the_page(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_run(tmp_path / "results" / "tiny-seed0")
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text("<!-- table:a results/tiny-* -->\n<!-- /table:a -->\n")
    (tmp_path / "docs" / "results.md").write_text("<!-- table:b ../results/tiny-* -->\n<!-- /table:b -->\n")
    (tmp_path / "docs" / "plain.md").write_text("no table here\n")
    pages = pages_with_tables(tmp_path)
    assert pages == [tmp_path / "README.md", tmp_path / "docs" / "results.md"]
    assert main(["--update-docs", *map(str, pages), "--section", "b"]) == 0
    assert "[0](../results/tiny-seed0)" in pages[1].read_text() and "tiny-seed0" not in pages[0].read_text()
    assert main(["--update-docs", *map(str, pages)]) == 0
    assert "[0](results/tiny-seed0)" in pages[0].read_text()
    assert capsys.readouterr().out.splitlines()[-1] == f"{pages[1]} is up to date"
    assert main(["--update-docs", *map(str, pages), "--section", "nope"]) == 2
    assert "no table 'nope'" in capsys.readouterr().err


DOC_TABLES = [(page, section) for page in pages_with_tables() for section in table_sections(page.read_text())]


def test_the_readme_has_generated_tables() -> None:
    assert ROOT / "README.md" in {page for page, _ in DOC_TABLES}, "README.md has no <!-- table:NAME GLOB... -->"


@pytest.mark.parametrize(("page", "section"), DOC_TABLES,
                         ids=[f"{page.relative_to(ROOT)}:{section.name}" for page, section in DOC_TABLES])
def test_doc_tables_are_what_results_generate(page: Path, section: TableSection) -> None:
    if not section_folders(section, page.parent):
        pytest.skip(f"results/ has nothing for table {section.name!r} yet ({' '.join(section.patterns)})")
    assert section.body == section_body(section, page.parent), (
        f"{page.relative_to(ROOT)}'s table {section.name!r} differs from its results: run "
        f"`python -m cifar.aggregate --update-docs --section {section.name}`")


# ---------------------------------------------------------------- end to end (slow)


@pytest.mark.slow
def test_a_run_records_tta_and_what_a_replay_needs(finished: Path) -> None:
    summary = json.loads((finished / "summary.json").read_text())
    last = json.loads((finished / "metrics.jsonl").read_text().splitlines()[-1])
    assert summary["test_acc"] == last["test_acc"] and summary["test_images"] == 100
    for key in ("test_acc_tta", "test_acc_tta_translate"):
        assert 0.0 <= summary[key] <= 1.0 and round(summary[key] * 100, 6).is_integer()  # k of 100 images
    assert (summary["device"], summary["processes"], summary["last_epoch_start"]) == ("cpu", 1, "step-000000007")
    assert summary["threads"] == torch.get_num_threads()  # same environment, same default
    assert ckpt.verify_checkpoint(finished / "checkpoints" / "step-000000007")["meta"]["epoch"] == 1


@pytest.mark.slow
def test_shipped_run_evaluates_to_its_figures_on_one_and_two_processes(finished: Path, tmp_path: Path) -> None:
    from tests.test_train import train
    shipped = tmp_path / "results" / "tiny"
    assert subprocess.run([sys.executable, "-m", "cifar.results", "ship", str(finished), str(shipped)],
                          cwd=ROOT, capture_output=True, text=True).returncode == 0
    assert not (shipped / "checkpoints").exists() and (shipped / "last_epoch_start" / "manifest.json").is_file()
    summary = json.loads((shipped / "summary.json").read_text())
    data = yaml.safe_load((shipped / "config.yaml").read_text())["data_dir"]
    expected = (f"test accuracy {summary['test_acc']:.2%} (100 images)",
                f"test-time augmentation: flip {summary['test_acc_tta']:.2%} (100 images), "
                f"flip_translate {summary['test_acc_tta_translate']:.2%} (100 images)")
    for processes in (1, 2):
        done = train("--cpu", "--data-dir", data, "--eval-only", shipped, "--num-workers", "0", processes=processes)
        assert done.returncode == 0, done.stderr
        assert all(text in done.stdout for text in expected), (processes, done.stdout)


@pytest.mark.slow
def test_replay_confirms_the_weights_bit_for_bit_and_catches_a_tampered_copy(finished: Path, tmp_path: Path) -> None:
    shipped = tmp_path / "results" / "tiny"
    results.ship_run(finished, shipped)
    done = subprocess.run([sys.executable, "-m", "cifar.replay", str(shipped)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "REPLAY MATCHES" in done.stdout and "1 process(es)" in done.stdout
    assert "under the run's fingerprint" in done.stdout  # train.py recorded it, and this machine has it
    weights, metadata = ckpt.load_weights(shipped / "model.safetensors")
    name = sorted(weights)[0]
    weights[name].view(-1).view(torch.int32)[0] ^= 1
    ckpt.save_weights(weights, shipped / "model.safetensors", metadata)
    done = subprocess.run([sys.executable, "-m", "cifar.replay", str(shipped)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "REPLAY DIFFERS: 1 of" in done.stdout and name in done.stdout and "Same fingerprint" in done.stdout

"""The command line, end to end, as a practitioner runs it headless (subprocesses, real files)."""

import json
import os
import subprocess
import sys

import pytest

from seglib.app import commands, headless, notebook_runner
from seglib.app.cli import build_parser, main
from seglib.app.commands import config_from_args
from seglib.core.config import TrainConfig
from seglib.engine import trainer


def seglib(*args, cwd=None, check=True):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        [sys.executable, "-m", "seglib", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"seglib {args} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc


def test_train_overrides_apply_on_top_of_the_profile():
    args = build_parser().parse_args(
        ["train", "--profile", "smoke", "--lr", "0.02", "--epochs", "3", "--set", "amp=false"]
    )
    cfg = config_from_args(args)
    assert (cfg.lr, cfg.num_epochs, cfg.amp, cfg.min_size) == (0.02, 3, False, 128)
    args = build_parser().parse_args(["train", "--set", "batch_size=4"])
    assert config_from_args(args).batch_size == 4 and config_from_args(args).weights == "coco"


def test_bad_input_is_one_line_on_stderr_with_exit_status_2(tmp_path, capsys):
    assert (
        main(
            [
                "subset",
                "--coco-root",
                str(tmp_path),
                "--out",
                str(tmp_path / "out"),
                "--categories",
                "unicorn",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert (
        main(
            [
                "train",
                "--profile",
                "smoke",
                "--lr",
                "-1",
                "--data",
                str(tmp_path),
                "--out",
                str(tmp_path / "r"),
            ]
        )
        == 2
    )
    assert "lr" in capsys.readouterr().err
    assert main(["train", "--config", str(tmp_path / "cfg.json")]) == 2
    assert "--data and --out" in capsys.readouterr().err


def test_synth_then_subset_writes_the_split_files(tmp_path):
    seglib("synth", "--out", tmp_path / "coco", "--images", 12, "--size", 96)
    out = seglib(
        "subset",
        "--coco-root",
        tmp_path / "coco",
        "--out",
        tmp_path / "subset",
        "--train",
        10,
        "--val",
        6,
        "--test",
        2,
    ).stdout
    for name in ("train.json", "val.json", "test.json", "manifest.json"):
        assert (tmp_path / "subset" / name).is_file()
    assert len(json.loads((tmp_path / "subset" / "test.json").read_text())["images"]) == 2
    assert "person" in out and "images" in out


@pytest.mark.slow
def test_synth_subset_train_evaluate_predict_in_sequence(tmp_path):
    coco, subset, run = tmp_path / "coco", tmp_path / "subset", tmp_path / "run"
    seglib("synth", "--out", coco, "--images", 16, "--size", 128)
    seglib("subset", "--coco-root", coco, "--out", subset, "--train", 6, "--val", 4, "--test", 2)
    seglib(
        "train",
        "--profile",
        "smoke",
        "--data",
        subset,
        "--out",
        run,
        "--epochs",
        1,
        "--set",
        "max_iters=3",
    )
    for name in ("config.json", "metrics.jsonl", "last.pt", "best.pt"):
        assert (run / name).is_file(), name
    again = seglib("train", "--profile", "smoke", "--data", subset, "--out", run, check=False)
    assert again.returncode == 2 and "--resume" in again.stderr and "--overwrite" in again.stderr

    table = seglib(
        "evaluate",
        "--data",
        subset,
        "--checkpoint",
        run / "best.pt",
        "--split",
        "test",
        "--out",
        run / "test_metrics.json",
        "--set",
        "score_thresh=0.0",
    ).stdout
    metrics = json.loads((run / "test_metrics.json").read_text())
    for section in ("bbox", "segm"):
        assert {"AP", "AP50", "AP75", "APs", "APm", "APl", "per_class"} <= set(metrics[section])
        assert set(metrics[section]["per_class"]) == {"cake", "car", "dog", "person"}
    assert "best_match_iou" in metrics and "AP" in table

    preds = tmp_path / "preds"
    seglib(
        "predict",
        "--checkpoint",
        run / "best.pt",
        "--images",
        subset / "images",
        "--out",
        preds,
        "--set",
        "score_thresh=0.0",
    )
    results = json.loads((preds / "results.json").read_text())
    assert isinstance(results, list)
    overlays = sorted(preds.glob("*.png"))
    assert len(overlays) == len(list((subset / "images").iterdir()))

    evaluated = seglib(
        "evaluate",
        "--gt",
        subset / "val.json",
        "--predictions",
        run / "val_results.json",
        check=False,
    )
    assert evaluated.returncode == 2 and "val_results.json" in evaluated.stderr


@pytest.mark.coco_tiny
def test_evaluate_scores_a_results_file_alike_against_the_subset_and_cocos_annotations(
    coco_tiny, tmp_path, capsys
):
    """A results file carries COCO's category ids, as the subset's val.json does; it and
    COCO's own annotations of the same images (categories in id order) give the same scores."""
    import numpy as np
    from pycocotools.coco import COCO

    from seglib.data.subset import build_subset

    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    (root / "annotations/instances_val2017.json").symlink_to(
        coco_tiny / "instances_train2017_tiny.json"
    )
    (root / "val2017").symlink_to(coco_tiny / "train2017")
    build_subset(root, tmp_path / "subset", num_train=0, num_val=10, num_test=0, progress=False)
    val = json.loads((tmp_path / "subset/val.json").read_text())
    full = json.loads((coco_tiny / "instances_train2017_tiny.json").read_text())
    coco_ids = {c["id"] for c in val["categories"]}
    kept = {a["id"] for a in val["annotations"]}
    original = dict(
        full,
        images=[im for im in full["images"] if im["id"] in {i["id"] for i in val["images"]}],
        annotations=[a for a in full["annotations"] if a["id"] in kept],
        categories=[c for c in full["categories"] if c["id"] in coco_ids],
    )
    (tmp_path / "original.json").write_text(json.dumps(original))

    # The true instances as predictions, in COCO's ids: some dropped, some mislabelled.
    coco = COCO()
    coco.dataset = original
    coco.createIndex()
    rng = np.random.default_rng(0)
    results = []
    for a in original["annotations"]:
        if a["iscrowd"] or rng.uniform() < 0.2:
            continue
        rle = coco.annToRLE(a)
        counts = rle["counts"]
        category = a["category_id"] if rng.uniform() > 0.15 else int(rng.choice(sorted(coco_ids)))
        results.append(
            {
                "image_id": a["image_id"],
                "category_id": category,
                "score": float(rng.uniform()),
                "segmentation": {
                    "size": rle["size"],
                    "counts": counts.decode() if isinstance(counts, bytes) else counts,
                },
            }
        )
    (tmp_path / "results.json").write_text(json.dumps(results))

    scores = {}
    for name, gt in (("subset", tmp_path / "subset/val.json"), ("original", "original.json")):
        gt = tmp_path / gt
        out = tmp_path / f"{name}_metrics.json"
        args = ["evaluate", "--gt", gt, "--predictions", tmp_path / "results.json", "--out", out]
        assert main([str(a) for a in args]) == 0
        scores[name] = json.loads(out.read_text())
        assert sorted(c["id"] for c in scores[name].pop("categories")) == sorted(coco_ids)
    assert scores["subset"] == scores["original"]
    assert 0 < scores["subset"]["segm"]["AP"] < 1 and 0 < scores["subset"]["bbox"]["AP"] < 1

    # The same file numbered by the model's labels (cake 1, car 2, dog 3, person 4) is refused:
    # the val images hold cars and persons, labels 2 and 4, COCO ids of no chosen category.
    label = {c["id"]: i for i, c in enumerate(val["categories"], start=1)}
    relabelled = [dict(r, category_id=label[r["category_id"]]) for r in results]
    (tmp_path / "labels.json").write_text(json.dumps(relabelled))
    capsys.readouterr()
    args = [
        "evaluate",
        "--gt",
        tmp_path / "subset/val.json",
        "--predictions",
        tmp_path / "labels.json",
    ]
    status = main([str(a) for a in args])
    assert status == 2 and "labels.json uses category ids [2, 4]" in capsys.readouterr().err


def _plain_pycocotools(gt_file, results_file) -> dict[str, list[float]]:
    """COCOeval's stats for a split file and a results file, with pycocotools alone, as any
    COCO user would run it: COCO(gt), loadRes(file), COCOeval, per iou type."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    stats = {}
    with contextlib.redirect_stdout(io.StringIO()):
        for iou_type in ("segm", "bbox"):
            gt = COCO(str(gt_file))
            evaluator = COCOeval(gt, gt.loadRes(str(results_file)), iou_type)
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
            stats[iou_type] = evaluator.stats.tolist()
    return stats


def _own_results(subset, split, gt_results, *, noisy):
    """seglib's results for the split's true instances (in-memory labels, from the conftest
    fixture), written by seglib's own writer; ``noisy`` drops, mislabels and rescores some."""
    import numpy as np

    from seglib.data.dataset import open_split
    from seglib.evaluation.coco_results import write_results

    dataset = open_split(subset, split)
    results = gt_results(dataset.coco)
    if noisy:
        rng = np.random.default_rng(0)
        k = len(dataset.categories)
        results = [
            dict(
                r,
                score=float(rng.uniform()),
                category_id=r["category_id"]
                if rng.uniform() > 0.15
                else int(rng.integers(1, k + 1)),
            )
            for r in results
            if rng.uniform() > 0.2
        ]
    return (
        dataset,
        results,
        write_results(subset / f"{split}_results.json", results, dataset.categories),
    )


def _check_plain_pycocotools_agrees(subset, split, gt_results, tmp_path):
    """The headline of issue 15, point 8: seglib's own results file, scored with pycocotools
    alone against seglib's own split file, gets what `seglib evaluate` reports."""
    from seglib.evaluation.coco_ap import evaluate_results

    gt_file = subset / f"{split}.json"
    _, _, perfect = _own_results(subset, split, gt_results, noisy=False)
    assert _plain_pycocotools(gt_file, perfect)["segm"][0] == pytest.approx(1.0)
    dataset, results, noisy = _own_results(subset, split, gt_results, noisy=True)
    plain = _plain_pycocotools(gt_file, noisy)
    out = tmp_path / f"{split}_metrics.json"
    assert (
        main(["evaluate", "--gt", str(gt_file), "--predictions", str(noisy), "--out", str(out)])
        == 0
    )
    cli = json.loads(out.read_text())
    in_memory = evaluate_results(dataset.coco, results)
    for iou_type in ("segm", "bbox"):
        for i, key in enumerate(("AP", "AP50", "AP75")):  # all areas: loadRes's area rule aside
            assert cli[iou_type][key] == pytest.approx(plain[iou_type][i], abs=1e-12), (
                iou_type,
                key,
            )
            assert in_memory[iou_type][key] == pytest.approx(plain[iou_type][i], abs=1e-12)
    assert 0 < cli["segm"]["AP"] < 1 and 0 < cli["bbox"]["AP"] < 1
    return plain["segm"][0], cli["segm"]["AP"]


def test_plain_pycocotools_scores_seglibs_own_files_as_seglib_evaluate_does(
    synthetic_subset, gt_results, tmp_path, capsys
):
    subset = tmp_path / "subset"
    subset.mkdir()
    for name in ("train.json", "val.json", "test.json"):
        (subset / name).write_bytes((synthetic_subset / name).read_bytes())
    (subset / "images").symlink_to(synthetic_subset / "images")
    _check_plain_pycocotools_agrees(subset, "val", gt_results, tmp_path)


@pytest.mark.coco_tiny
def test_plain_pycocotools_scores_seglibs_own_files_on_real_coco(
    coco_tiny, gt_results, tmp_path, capsys
):
    from seglib.data.subset import build_subset

    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    (root / "annotations/instances_val2017.json").symlink_to(
        coco_tiny / "instances_train2017_tiny.json"
    )
    (root / "val2017").symlink_to(coco_tiny / "train2017")
    subset = tmp_path / "subset"
    build_subset(root, subset, num_train=0, num_val=10, num_test=0, progress=False)
    _check_plain_pycocotools_agrees(subset, "val", gt_results, tmp_path)


def test_train_takes_the_subsets_categories_unless_given(
    synthetic_coco, tmp_path, monkeypatch, capsys
):
    from seglib.core.config import TrainConfig
    from seglib.data.subset import build_subset

    subset = tmp_path / "subset"
    build_subset(
        synthetic_coco,
        subset,
        categories=["dog", "cake"],
        num_train=4,
        num_val=2,
        num_test=1,
        progress=False,
    )
    seen = []
    monkeypatch.setattr(trainer, "train", lambda cfg, data, out, **kw: seen.append(cfg) or {})
    base = ["train", "--profile", "smoke", "--data", str(subset)]
    assert main([*base, "--out", str(tmp_path / "a")]) == 0
    assert seen[-1].categories == ("dog", "cake")  # the subset's, not the profile's four
    assert main([*base, "--out", str(tmp_path / "b"), "--categories", "dog", "cake"]) == 0
    assert seen[-1].categories == ("dog", "cake")
    assert main([*base, "--out", str(tmp_path / "b2"), "--set", 'categories=["dog","cake"]']) == 0
    assert seen[-1].categories == ("dog", "cake")

    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "c"), "--categories", "cake", "dog"]) == 2
    err = capsys.readouterr().err
    assert "--categories (--set categories) asks for categories ['cake', 'dog']" in err
    assert "holds ['dog', 'cake']" in err and "seglib subset --categories" in err
    config = TrainConfig.smoke().save(tmp_path / "config.json")  # the four default categories
    args = ["train", "--config", config, "--data", subset, "--out", tmp_path / "d"]
    assert main([str(a) for a in args]) == 2
    assert (
        "config.json asks for categories ['cake', 'car', 'dog', 'person']"
        in capsys.readouterr().err
    )
    assert len(seen) == 3


def test_evaluate_asks_for_a_complete_set_of_inputs(tmp_path, capsys):
    assert main(["evaluate", "--gt", str(tmp_path / "val.json")]) == 2
    assert capsys.readouterr().err == "error: --gt and --predictions go together\n"
    assert main(["evaluate", "--data", str(tmp_path)]) == 2
    assert "give --data with --checkpoint FILE or --zero-shot" in capsys.readouterr().err


def test_post_processing_is_refused_for_zero_shot_mask2former_before_any_weights(
    synthetic_subset, capsys
):
    args = ["evaluate", "--data", synthetic_subset, "--zero-shot", "--set", "arch=mask2former"]
    assert main([str(a) for a in [*args, "--set", "postprocess=matrix-nms"]]) == 2
    err = capsys.readouterr().err
    assert "postprocess 'matrix-nms'" in err and "arch 'mask2former' has no NMS to replace" in err
    assert main([str(a) for a in [*args, "--set", "tta_hflip=true"]]) == 2
    err = capsys.readouterr().err
    assert "tta_hflip True" in err and "no NMS to replace" in err


# --- one way to change a setting: --set on every command that builds a TrainConfig ------------
@pytest.fixture
def stubbed(monkeypatch, tmp_path, synthetic_subset):
    """Every library call the five commands make, replaced by a recorder: ``seen[command]``
    holds what reached it (the config, the device, the score threshold, the overrides)."""
    monkeypatch.setenv("SEGLIB_DATA", str(tmp_path / "data"))
    seen = {}
    monkeypatch.setattr(trainer, "train", lambda cfg, data, out, **kw: seen.update(train=cfg) or {})

    def evaluate_results(gt, predictions, score_thresh):
        seen["evaluate"] = {"score_thresh": score_thresh}
        return {}

    monkeypatch.setattr(commands, "evaluate_results", evaluate_results)
    monkeypatch.setattr(commands, "format_table", lambda metrics: "table")
    run_cfg = TrainConfig.smoke()
    monkeypatch.setattr(
        commands, "model_from_checkpoint", lambda path, device: ("model", run_cfg, [])
    )
    monkeypatch.setattr(commands, "wrap", lambda model, cfg: ("wrapped", cfg))

    def predict_images(model, images, out, device, categories, score_thresh, cpu_amp):
        seen["predict"] = {"model": model, "device": str(device), "score_thresh": score_thresh}
        seen["predict"]["cpu_amp"] = cpu_amp
        return {"num_images": 0, "num_predictions": 0, "results": out / "results.json"}

    monkeypatch.setattr(commands, "predict_images", predict_images)

    def run_study(checkpoint, data, device, **kw):
        seen["study"] = {"device": str(device)}
        return {}

    monkeypatch.setattr(commands.occlusion_study, "run_study", run_study)
    monkeypatch.setattr(commands, "save_study", lambda study, out: {"json": "j", "table": "t"})
    monkeypatch.setattr(commands, "format_study", lambda study: "study")

    def run_notebooks(profile, out, **kw):
        seen["run"] = kw["overrides"]
        return iter([])

    monkeypatch.setattr(headless, "preflight", lambda profile, paths: [])
    monkeypatch.setattr(notebook_runner, "run_notebooks", run_notebooks)
    monkeypatch.setattr(notebook_runner, "notebook_paths", lambda *a: [])
    monkeypatch.setattr(headless, "check_outputs", lambda paths, stems: [])
    monkeypatch.setattr(commands, "headline_ap", lambda paths: {"segm_AP50": 0.5})
    return seen


def _argv(command, tmp_path, synthetic_subset):
    """The least a command needs besides its settings."""
    files = ["--checkpoint", tmp_path / "best.pt"]
    return [
        str(a)
        for a in {
            "train": ["train", "--profile", "smoke", "--data", synthetic_subset],
            "evaluate": ["evaluate", "--gt", tmp_path / "val.json", "--predictions", tmp_path],
            "predict": ["predict", *files, "--images", tmp_path, "--out", tmp_path / "p"],
            "study": [
                "study",
                "postprocess",
                "--data",
                synthetic_subset,
                *files,
                "--out",
                tmp_path / "s",
            ],
            "run": ["run", "--profile", "smoke"],
        }[command]
    ]


COMMANDS = ("train", "evaluate", "predict", "study", "run")


def test_every_command_that_builds_a_config_takes_set(stubbed, tmp_path, synthetic_subset):
    def run(command, *settings):
        out = ["--out", str(tmp_path / f"run{len(stubbed)}")] if command == "train" else []
        argv = [*_argv(command, tmp_path, synthetic_subset), *out, *settings]
        assert main(argv) == 0, argv
        return stubbed.pop(command)

    assert run("train", "--set", "lr=0.005", "--set", "num_epochs=2").lr == 0.005
    assert run("evaluate", "--set", "score_thresh=0.25") == {"score_thresh": 0.25}
    predicted = run("predict", "--set", "score_thresh=0.2", "--set", "postprocess=mask-nms")
    assert predicted["score_thresh"] == 0.2 and predicted["device"] == "cpu"
    assert predicted["model"][1] == TrainConfig.smoke(postprocess="mask-nms")  # over the run's
    assert run("predict")["model"] == "model"  # no post-processing asked: the checkpoint's own
    assert run("predict")["cpu_amp"] == "auto"  # bf16 where this CPU computes it natively
    assert run("predict", "--set", "cpu_amp_eval=off")["cpu_amp"] == "off"
    assert run("study", "--set", "device=cpu") == {"device": "cpu"}
    assert run("run", "--set", "lr=0.002", "--set", "tta_hflip=true") == {
        "lr": 0.002,
        "tta_hflip": True,
    }


@pytest.mark.parametrize(
    "command, alias, value, field",
    [
        ("train", "--epochs", "3", "num_epochs"),
        ("train", "--lr", "0.02", "lr"),
        ("train", "--device", "cpu", "device"),
        ("train", "--categories", "dog cake", "categories"),
        ("run", "--epochs", "3", "num_epochs"),
        ("run", "--lr", "0.02", "lr"),
        ("evaluate", "--device", "cpu", "device"),
        ("predict", "--device", "cpu", "device"),
        ("study", "--device", "cpu", "device"),
    ],
)
def test_an_alias_is_its_set_item(command, alias, value, field, tmp_path, synthetic_subset):
    base = _argv(command, tmp_path, synthetic_subset)
    with_alias = build_parser().parse_args([*base, alias, *value.split()])
    item = json.dumps(value.split()) if alias == "--categories" else value
    with_set = build_parser().parse_args([*base, "--set", f"{field}={item}"])
    assert with_alias.overrides == with_set.overrides == [f"{field}={item}"]
    if command == "train":
        assert config_from_args(with_alias) == config_from_args(with_set)
    # in command-line order, the last one wins
    last = build_parser().parse_args([*base, "--set", f"{field}=0", alias, *value.split()])
    assert last.overrides == [f"{field}=0", f"{field}={item}"]


@pytest.mark.parametrize(
    "item, named",
    [
        ("device=gpu", ["device must be one of ('auto', 'cpu', 'cuda') or 'cuda:N'", "'gpu'"]),
        ("epochs=3", ["'epochs' is not a TrainConfig field", "did you mean 'num_epochs'"]),
        ("device=7", ["device must be str, got 7"]),
    ],
)
def test_a_bad_set_fails_alike_on_every_command(
    item, named, stubbed, tmp_path, synthetic_subset, capsys
):
    errors = {}
    for command in COMMANDS:
        assert main([*_argv(command, tmp_path, synthetic_subset), "--set", item]) == 2, command
        errors[command] = capsys.readouterr().err
    assert len(set(errors.values())) == 1, errors
    err = errors["train"]
    assert err.startswith("error: ") and err.count("\n") == 1
    assert all(part in err for part in named), err
    assert not stubbed  # nothing ran


def test_a_bad_alias_fails_as_its_set_item_does(tmp_path, synthetic_subset, capsys):
    base = _argv("train", tmp_path, synthetic_subset)
    assert main([*base, "--epochs", "three"]) == 2
    alias = capsys.readouterr().err
    assert main([*base, "--set", "num_epochs=three"]) == 2
    assert capsys.readouterr().err == alias and "num_epochs must be int" in alias


def test_a_command_refuses_a_field_it_does_not_read(stubbed, tmp_path, synthetic_subset, capsys):
    for command in ("evaluate", "predict", "study"):
        assert main([*_argv(command, tmp_path, synthetic_subset), "--set", "lr=0.1"]) == 2
        err = capsys.readouterr().err
        label = "study postprocess" if command == "study" else command
        assert f"'lr' is a TrainConfig field that `{label}` does not read" in err
        assert "'device'" in err
    argv = ["evaluate", "--data", str(synthetic_subset), "--checkpoint", str(tmp_path / "c.pt")]
    assert main([*argv, "--set", "arch=v2"]) == 2
    assert "--set arch chooses the --zero-shot model" in capsys.readouterr().err
    assert not stubbed


def test_help_does_not_import_torch_or_the_handlers():
    code = (
        "import sys\n"
        "from seglib.app.cli import main\n"
        "for argv in (['--help'], ['train', '--help'], ['evaluate', '--help']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(sorted(m for m in ('torch', 'seglib.app.commands') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_the_command_process_imports_nbformat_without_the_iri_grammar_and_still_validates():
    # once a command has parsed, as `python -m seglib run` loads the notebook runner
    code = (
        "import sys\n"
        "from seglib.app import cli\n"
        "cli._handlers()\n"
        "import nbformat\n"
        "assert sys.modules['rfc3987_syntax'] is None, 'rfc3987_syntax was imported'\n"
        "nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell('1')])\n"
        "nbformat.validate(nb)\n"
        "nb.cells[0]['bogus'] = 1\n"
        "try:\n"
        "    nbformat.validate(nb)\n"
        "except nbformat.ValidationError:\n"
        "    print('rejected')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "rejected"

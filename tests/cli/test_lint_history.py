"""Items 7 and 8: lint reads native sizes from --data and gates with --strict; history does not
invent a stop reason without args.yaml."""

from __future__ import annotations

from tests.cli.helpers import run_cli, write_results_csv
from tests.dataset.builders import make_dataset


def test_lint_recipe_file_name_data_and_strict(tmp_path):
    make_dataset(tmp_path / "ds")  # 64x64 images
    by_name = run_cli("lint", "phase2-seed.yaml", cwd=tmp_path)
    assert by_name.returncode == 0 and "TRAIN_CONF" in by_name.stdout  # found, advice only
    assert "IMGSZ_ABOVE_NATIVE" not in by_name.stdout and "--data" in by_name.stderr
    sized = run_cli("lint", "phase2-seed", "--data", "ds", "--strict", cwd=tmp_path)
    assert sized.returncode == 1
    assert "IMGSZ_ABOVE_NATIVE  train.imgsz: imgsz=640 upsamples images whose largest side is 64 px" in sized.stdout
    clean = run_cli("lint", "phase2-native", "--data", "ds/data.yaml", "--strict", "--json", cwd=tmp_path)
    assert clean.json()["native"] == 64
    assert clean.returncode == (1 if clean.json()["findings"] else 0)


def test_lint_unknown_recipe_lists_the_known_ones(tmp_path):
    result = run_cli("lint", "phase2-sed", cwd=tmp_path)
    assert result.returncode == 1 and "recipe not found" in result.error_line()
    assert "phase2-seed" in result.error_line()


def test_history_without_args_yaml_does_not_invent_a_stop_reason(tmp_path):
    write_results_csv(tmp_path / "run" / "results.csv", epochs=21, best=6)  # the guide's run: 21 of 80
    unknown = run_cli("history", "run", "--json", cwd=tmp_path)  # a run folder resolves to its results.csv
    assert unknown.returncode == 0
    reason = unknown.json()["stop_reason"]
    assert reason.startswith("unknown") and "--patience" in reason and "epochs reached" not in reason
    told = run_cli("history", "run/results.csv", "--patience", "15", "--epochs", "80", cwd=tmp_path)
    assert "stop reason: patience 15 after epoch 6" in told.stdout
    (tmp_path / "run" / "args.yaml").write_text("epochs: 80\npatience: 15\n")
    read = run_cli("history", "run/results.csv", "--json", cwd=tmp_path)
    assert read.json()["stop_reason"] == "patience 15 after epoch 6"

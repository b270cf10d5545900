"""Item 4: `--json` prints pure JSON on stdout, also when Ultralytics is imported, and the
Ultralytics settings we write are the installed version's, so it never resets them."""

from __future__ import annotations

import json

from tests.cli.helpers import run_cli, write_results_csv


def test_history_json_is_pure_json_and_settings_are_never_reset(tmp_path):
    state = tmp_path / "state"
    settings_file = state / "ultralytics" / "Ultralytics" / "settings.json"
    settings_file.parent.mkdir(parents=True)
    # What the previous release wrote: a `hub` key that ultralytics 8.4 does not know.
    settings_file.write_text(json.dumps({"sync": False, "hub": False, "runs_dir": str(state / "runs")}))
    write_results_csv(tmp_path / "results.csv")
    env = {"PHASE2_STATE_DIR": str(state)}
    for _ in range(2):
        result = run_cli("history", "results.csv", "--json", cwd=tmp_path, env=env)
        assert result.returncode == 0, result.stderr
        assert result.json()["best_epoch"] == 6  # stdout parses as a whole
        assert "settings updated" not in result.stdout + result.stderr
    written = json.loads(settings_file.read_text())
    assert "hub" not in written and written["sync"] is False and written["runs_dir"] == str(state / "runs")


def test_lint_and_registry_json(tmp_path):
    lint = run_cli("lint", "phase2-seed", "--native", "312", "--json", cwd=tmp_path)
    assert lint.returncode == 0
    codes = {f["code"] for f in lint.json()["findings"]}
    assert {"TRAIN_CONF", "IMGSZ_ABOVE_NATIVE"} <= codes

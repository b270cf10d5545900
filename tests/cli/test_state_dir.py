"""The state dir is found the way git finds .git; read-only commands create nothing in the cwd."""

from __future__ import annotations

from tests.cli.helpers import run_cli, write_results_csv
from tests.dataset.builders import make_dataset


def test_commands_find_the_project_state_from_a_subdirectory(tmp_path):
    (tmp_path / ".phase2").mkdir()
    deep = tmp_path / "notebooks" / "week1"
    deep.mkdir(parents=True)
    result = run_cli("status", cwd=deep)
    assert result.returncode == 0
    assert result.json()["state_dir"] == str(tmp_path / ".phase2")
    assert not (deep / ".phase2").exists()
    # PHASE2_STATE_DIR, when set, wins (it is what child processes inherit).
    explicit = run_cli("status", cwd=deep, env={"PHASE2_STATE_DIR": str(tmp_path / "elsewhere")})
    assert explicit.json()["state_dir"] == str(tmp_path / "elsewhere")


def test_read_only_commands_create_nothing_in_the_cwd(tmp_path):
    make_dataset(tmp_path / "ds")
    write_results_csv(tmp_path / "results.csv")
    before = sorted(p.name for p in tmp_path.iterdir())
    for args in (
        ("validate", "ds", "--imgsz", "64", "--recipe", "phase2-demo"),
        ("lint", "phase2-seed"),
        ("history", "results.csv"),
        ("status",),
    ):
        result = run_cli(*args, cwd=tmp_path)
        assert "Traceback" not in result.stderr, (args, result.stderr)
        assert sorted(p.name for p in tmp_path.iterdir()) == before, args

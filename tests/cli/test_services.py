"""Items 2 and 3: registry, recover and deploy when the local stack is down or the configured
server does not answer: one line saying so (not credentials, not "endpoint None"), fast."""

from __future__ import annotations

import socket

from tests.cli.helpers import run_cli


def _dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed on exit: nothing listens there


def test_models_list_with_the_stack_down_says_so_within_3_s(tmp_path):
    result = run_cli("models", "list", cwd=tmp_path)
    assert result.returncode == 1
    line = result.error_line()
    assert "the local stack" in line and "is not running" in line and "phase2 up" in line
    assert "credentials" not in line
    assert result.seconds < 3, result.seconds
    assert list(tmp_path.iterdir()) == []  # a read-only command creates no ./.phase2


def test_dead_endpoint_fails_fast_and_keys_without_endpoint_never_say_none(tmp_path):
    keys = {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}
    endpoint = f"http://127.0.0.1:{_dead_port()}"
    dead = run_cli("models", "show", "v1", cwd=tmp_path, env={**keys, "PHASE2_S3_ENDPOINT": endpoint})
    assert dead.returncode == 1 and dead.seconds < 3
    assert dead.error_line().startswith(f"error: PHASE2_S3_ENDPOINT={endpoint}: S3 server not reachable")
    aws = run_cli("models", "list", "--json", cwd=tmp_path, env=keys)
    assert aws.returncode == 1 and aws.stdout == ""
    assert "None" not in aws.error_line() and "AWS S3" in aws.error_line()


def test_recover_without_prefect_names_the_setting_and_starts_nothing(tmp_path):
    result = run_cli("recover", "--dry-run", cwd=tmp_path)
    assert result.returncode == 1 and result.seconds < 10
    line = result.error_line()
    assert "PREFECT_API_URL is not set" in line and "phase2 up" in line
    assert list(tmp_path.iterdir()) == []


def test_recover_and_deploy_with_a_dead_prefect_url(tmp_path):
    url = f"http://127.0.0.1:{_dead_port()}/api"
    for command in ("recover", "deploy"):
        result = run_cli(command, cwd=tmp_path, env={"PREFECT_API_URL": url, "PHASE2_STATE_DIR": str(tmp_path / "s")})
        assert result.returncode == 1, command
        assert result.error_line().startswith(f"error: PREFECT_API_URL={url}: Prefect server not reachable")


def test_deploy_without_prefect_url_does_not_start_the_stack(tmp_path):
    state = tmp_path / "state"
    result = run_cli("deploy", cwd=tmp_path, env={"PHASE2_STATE_DIR": str(state)})
    assert result.returncode == 1 and result.seconds < 10
    assert "PREFECT_API_URL is not set" in result.error_line()
    assert not (state / "seaweedfs").exists() and not (state / "prefect" / "server.pid.json").exists()


def test_registry_commands_find_the_running_stack_from_a_subdirectory(seaweedfs, tmp_path):
    """State lives in the project's .phase2 (here: the real SeaweedFS's state dir); a command run
    from a subdirectory, with no S3 settings exported, finds it and reaches the server."""
    project = tmp_path / "project"
    (project / "notebooks").mkdir(parents=True)
    (project / ".phase2").symlink_to(seaweedfs.root.parent, target_is_directory=True)
    result = run_cli("models", "list", "--json", cwd=project / "notebooks")
    assert result.returncode == 0, result.stderr
    assert result.json() == {"aliases": {}, "versions": []}
    assert not (project / "notebooks" / ".phase2").exists()

"""What a user runs: the Procfile's processes as written, the CLI, and the demo command."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.support import CLI, Service, run_cli, sha256_file


def test_cli_extend_wait_shows_progress_and_archive(service: Service) -> None:
    seed = service.seed(5.0)
    done = run_cli(
        service, "extend", seed["video_id"], "--task-id", seed["task_id"], "--to", "15", "--wait"
    )
    assert done.returncode == 0, done.stderr
    assert "/ 15 s" in done.stdout  # the progress bar
    assert "succeeded (target_reached)" in done.stdout
    final_line = done.stdout.strip().splitlines()[-1]
    assert final_line.startswith("final video: ")
    path = Path(final_line.removeprefix("final video: ").rsplit(" (", 1)[0])
    assert path.is_file()
    video_id = path.stem
    assert sha256_file(path) == service.gateway_sha256(video_id)

    chain_id = done.stdout.split()[1]
    status = run_cli(service, "status", chain_id)
    assert status.returncode == 0
    assert "succeeded" in status.stdout


def test_cli_bad_input_is_a_clear_message_not_a_traceback(service: Service) -> None:
    before = service.stats()["creates_total"]
    done = run_cli(service, "extend", "vid1", "--to", "500")
    assert done.returncode == 2
    assert "target_seconds" in done.stderr
    assert "180" in done.stderr
    assert "Traceback" not in done.stderr
    missing = run_cli(service, "status", "no-such-chain")
    assert missing.returncode == 2
    assert "no chain with this id" in missing.stderr
    assert service.stats()["creates_total"] == before


def test_cli_with_a_wrong_token_is_told_so_and_starts_nothing(service: Service) -> None:
    before = service.stats()["creates_total"]
    done = run_cli(service, "extend", "vid1", "--steps", "1", token="not-the-token")
    assert done.returncode == 2
    assert "API token" in done.stderr
    assert "Traceback" not in done.stderr
    assert service.stats()["creates_total"] == before


def test_cli_says_when_the_service_is_unreachable() -> None:
    done = subprocess.run(
        [*CLI, "--api", "http://127.0.0.1:9", "status", "x"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert "cannot reach the service" in done.stderr
    assert "Traceback" not in done.stderr


def test_http_api_through_the_procfile_processes(service: Service) -> None:
    chain = service.create(
        {"text_prompt": "waves at dusk", "text_duration": 5, "target_seconds": 12}
    )
    final = service.wait(chain["id"])
    assert final["status"] == "succeeded", final
    assert final["duration"] >= 12
    listed = service.http.get(f"{service.api}/chains", timeout=5).json()["chains"]
    assert chain["id"] in [c["id"] for c in listed]


def test_demo_command_runs_end_to_end_without_redis_installed(tmp_path: Path) -> None:
    # The demo embeds its own Redis-compatible server: REDIS_URL is ignored on purpose.
    done = subprocess.run(
        [*CLI, "demo", "--target", "14", "--delay", "0.3", "--archive-dir", str(tmp_path / "a")],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "embedded Redis" in done.stdout
    assert re.search(r"dashboard: http://127\.0\.0\.1:\d+/#token=[A-Za-z0-9_-]{32,}\n", done.stdout)
    assert "succeeded (target_reached)" in done.stdout
    final = done.stdout[done.stdout.index("final video: ") :].splitlines()[0]
    path = Path(final.removeprefix("final video: ").rsplit(" (", 1)[0])
    assert path.parent == tmp_path / "a"
    assert path.is_file()
    assert path.stat().st_size > 0

"""Team mode against real servers: the trainings of `dvc repro` logged once each to an MLflow
tracking server on PostgreSQL, that server's run comparison seen in headless Chromium, and
its basic authentication."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import mlflow
import pytest
import requests

from . import servers
from .cli import dvc, project_repo
from .conftest import WORKLOAD, tiny_params

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]

EPOCHS = 2
OPTIMIZERS = ["sgd", "adam"]


@pytest.fixture(scope="module")
def server_runs(tmp_path_factory, tiny_mirror):
    """A tracking server on PostgreSQL that `dvc repro train` logged two optimizers'
    trainings to (one seed, 2 epochs on tiny data)."""
    folder = tmp_path_factory.mktemp("team")
    mirror, sha256 = tiny_mirror
    params = tiny_params(sha256)
    params["train"] |= {"epochs": EPOCHS, "seeds": [42]}
    params["compare"] = OPTIMIZERS
    with servers.postgres() as pg:
        backend = servers.create_database(pg, "mlflow_team")
        with servers.tracking_server(backend, folder / "artifacts") as url:
            root = folder / "project"
            env = project_repo(root, mirror, params) | {"MLFLOW_TRACKING_URI": url}
            dvc(root, env, "repro", "train")
            yield root, url


def test_every_training_reaches_the_tracking_server_once_with_its_model(server_runs) -> None:
    root, url = server_runs
    client = mlflow.MlflowClient(url)
    experiment = client.get_experiment_by_name("mnist-optimizers")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    assert sorted(r.info.run_name for r in runs) == sorted(f"{WORKLOAD}/{n}-42" for n in OPTIMIZERS)
    for r in runs:
        assert r.info.status == "FINISHED"
        assert r.data.tags["dvc.stage"] == f"train@{r.info.run_name.replace('/', '-')}"
        history = client.get_metric_history(r.info.run_id, "val_accuracy")
        assert sorted(m.step for m in history) == list(range(1, EPOCHS + 1))
        (model,) = r.outputs.model_outputs
        files = {a.path for a in client.list_logged_model_artifacts(model.model_id)}
        assert "MLmodel" in files, files
    assert not (root / "mlflow.db").exists()  # nothing fell back to a local store


CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    # This machine has no internet: without these, Chromium keeps calling home and failing.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--window-size=1920,2200",  # wide enough to draw all four columns
)


def browser():
    """Headless Debian Chromium driven by its ChromeDriver (no download of either)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    chromium, driver = servers.require_chromium()
    options = Options()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options)


GRID_CELLS = "//div[contains(@class, 'ReactVirtualized__Grid__innerScrollContainer')]/div"


def metric_row(driver, metric: str) -> list[float]:
    """The values of ``metric`` in the run comparison's Metrics table, left to right: the
    cells level with its name cell. The table is a virtualized grid that draws only the rows
    in view, so scroll it until the row is drawn."""
    from selenium.webdriver.common.by import By

    for _ in range(20):
        labels = driver.find_elements(By.XPATH, f"{GRID_CELLS}[normalize-space()='{metric}']")
        if labels:
            break
        driver.execute_script(
            "document.querySelectorAll('.ReactVirtualized__Grid').forEach(g => g.scrollTop += 90)"
        )
        time.sleep(0.3)
    else:
        pytest.fail(f"the Metrics table shows no row {metric}")
    label = labels[0].location
    cells = [
        cell
        for cell in driver.find_elements(By.XPATH, GRID_CELLS)
        if cell.location["y"] == label["y"] and cell.location["x"] > label["x"]
    ]
    return [float(cell.text) for cell in sorted(cells, key=lambda cell: cell.location["x"])]


def test_the_ui_compares_the_training_runs_in_chromium(server_runs, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    _, url = server_runs
    client = mlflow.MlflowClient(url)
    experiment = client.get_experiment_by_name("mnist-optimizers")
    runs = [
        client.search_runs([experiment.experiment_id], f"tags.`dvc.stage` = 'train@mnist_cnn-{name}-42'")[0]
        for name in OPTIMIZERS
    ]
    names = [r.info.run_name for r in runs]
    assert sorted(names) == [f"{WORKLOAD}/adam-42", f"{WORKLOAD}/sgd-42"]
    query = urllib.parse.urlencode(
        {
            "runs": json.dumps([r.info.run_id for r in runs]),
            "experiments": json.dumps([experiment.experiment_id]),
        }
    )
    driver = browser()
    try:
        driver.get(f"{url}/#/compare-runs?{query}")
        wait = WebDriverWait(driver, 60)
        wait.until(ec.text_to_be_present_in_element((By.TAG_NAME, "body"), "Run Name:"))
        wait.until(ec.text_to_be_present_in_element((By.TAG_NAME, "body"), "val_accuracy"))
        # The assistant's side panel hides part of the table: close it, as a user would.
        for button in driver.find_elements(By.XPATH, "//button[@aria-label='Close']"):
            button.click()
        name_row = driver.find_element(By.XPATH, "//tr[th[normalize-space()='Run Name:']]")
        shown_names = [td.text for td in name_row.find_elements(By.XPATH, "./td")]
        shown = metric_row(driver, "val_accuracy")
        screenshot = tmp_path / "mlflow-compare.png"  # what the page showed, for a failure
        driver.save_screenshot(str(screenshot))
    finally:
        driver.quit()

    assert shown_names == names, f"the page as Chromium showed it: {screenshot}"
    # The UI rounds to 3 decimals: each column shows its own run's final val_accuracy.
    expected = [r.data.metrics["val_accuracy"] for r in runs]
    assert shown == pytest.approx(expected, abs=0.0005), f"the page: {screenshot}"


# A stage's MLflow logging, as run_stage runs it: connect, start a run, log, end it.
LOG_ONE_RUN = """
import mlflow
from mnist_optimizers import mlflow_runs, mlflow_store
from mnist_optimizers.cli import run_stage

def main(argv):
    experiment_id = mlflow_store.setup_experiment("secrets-check")
    with mlflow_runs.tracked_run(experiment_id, "sgd-42", mlflow_runs.run_tags("train@mnist_cnn-sgd-42")):
        mlflow.log_metric("val_accuracy", 0.5)

run_stage(main)
"""


def test_basic_authentication_turns_away_anonymous_clients(tmp_path) -> None:
    password = "a-test-password-0"
    config_dir = tmp_path / "tmp"  # where the script writes its auth configuration
    config_dir.mkdir()
    with servers.postgres() as pg:
        backend = servers.create_database(pg, "mlflow_auth")
        with servers.tracking_server(
            backend,
            tmp_path / "artifacts",
            ["--auth"],
            {"MLFLOW_AUTH_ADMIN_PASSWORD": password, "TMPDIR": str(config_dir)},
        ) as url:
            (config,) = config_dir.glob("mlflow-basic-auth.*.ini")
            assert config.stat().st_mode & 0o777 == 0o600  # it holds the database URI
            check_a_password_in_the_uri_is_never_shown(url, password, tmp_path)
            search = f"{url}/api/2.0/mlflow/experiments/search?max_results=1"
            assert requests.get(search, timeout=10).status_code == 401
            assert requests.get(search, auth=("admin", "wrong"), timeout=10).status_code == 401
            assert requests.get(search, auth=("admin", password), timeout=10).status_code == 200
            # The pipeline's client logs with the credentials from the environment.
            env = {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": password}
            with pytest.MonkeyPatch.context() as mp:
                for key, value in env.items():
                    mp.setenv(key, value)
                client = mlflow.MlflowClient(url)
                run = client.create_run(client.create_experiment("auth-check"))
                client.log_metric(run.info.run_id, "val_accuracy", 0.5)
                assert client.get_run(run.info.run_id).data.metrics == {"val_accuracy": 0.5}
    left = list(config_dir.glob("mlflow-basic-auth.*"))
    assert not left, "the auth configuration outlived the server"


def check_a_password_in_the_uri_is_never_shown(url: str, password: str, tmp_path: Path) -> None:
    """MLFLOW_TRACKING_URI=http://admin:<password>@host: the run is logged with those
    credentials, and the password is in no line the stage prints (MLflow's "View run at"
    included) and in no param or tag of the run; a wrong password fails with one line
    that does not show it either."""
    host = url.removeprefix("http://")
    outputs = []
    for secret, status in ((password, 0), ("wrong-password-1", 1)):
        result = subprocess.run(
            [sys.executable, "-c", LOG_ONE_RUN],
            cwd=tmp_path,
            env=servers.tool_env(
                {"MLFLOW_TRACKING_URI": f"http://admin:{secret}@{host}", "PYTHONPATH": str(ROOT)}
            ),
            capture_output=True,
            text=True,
            timeout=120,
        )
        output = result.stdout + result.stderr
        assert result.returncode == status, output
        assert secret not in output and "admin:***@" not in output, output
        outputs.append(output)
    assert f"View run sgd-42 at: {url}/#/experiments/" in outputs[0]
    assert "Traceback" not in outputs[1], outputs[1]
    client = mlflow.MlflowClient(url)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        mp.setenv("MLFLOW_TRACKING_PASSWORD", password)
        experiment = client.get_experiment_by_name("secrets-check")
        (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    recorded = json.dumps([run.data.params, run.data.tags, run.info.to_proto().__str__()])
    assert password not in recorded

"""``make dag-test``'s console: the pipeline's lines and each task's state, Airflow's own records to the log."""

from __future__ import annotations

import os
import sys

from pipeline.dagtest import ConsoleFilter, airflow, tail

# Lines of a real `airflow dags test han_retrain` (Airflow 3.3), stdout and stderr together, shortened on the right:
# a preprocess task that succeeds, a train task that fails once.
SAMPLE = """\
2026-12-03T18:23:35.505294Z [warning  ] Could not import graphviz. Rendering graph to the graphical format will not be possible.
You might need to install the graphviz package and necessary system packages.
Run `pip install graphviz` to attempt to install it. [py.warnings] category=UserWarning filename=/x/dag_command.py lineno=57
2026-12-03T18:23:35.919154Z [info     ] DAG bundles loaded: dags-folder [airflow.dag_processing.bundles.manager.DagBundlesManager]
2026-12-03T18:23:36.682188Z [info     ] Created dag run.               [airflow.models.dagrun] dagrun=<DagRun han_retrain @ 20
2026-12-03T18:23:36.729771Z [info     ] [DAG TEST] starting task_id=preprocess map_index=-1 [airflow.sdk.definitions.dag] loc=dag.py:1501
2026-12-03T18:23:36.730150Z [info     ] [DAG TEST] running task <TaskInstance: han_retrain.preprocess manual__2026-12-03T18:23:36.2
2026-12-03T18:23:43.557684Z [info     ] Task started                   [airflow.api_fastapi.execution_api.routes.task_instances] co
2026-12-03T18:23:43.560275Z [info     ] Task instance state updated    [airflow.api_fastapi.execution_api.routes.task_instances] correlation_id=01a23d25-d0e2 loc=task_instances.py:254 rows_affected=1 ti_id=01a23d25-cac6
2026-12-03T18:23:43.635579Z [info     ] ::endgroup::                   [task] loc=task_runner.py:2232
2026/12/03 18:23:47 INFO mlflow.store.db.utils: Creating initial MLflow database tables...
read documents: 200 in 0.1s (2,149/s)
preprocess: 200 input = 200 kept + 0 quarantined
preprocess: wrote /tmp/dagart/demo/preprocess in 3.8s (52 documents/s); vocabulary 232, limits 29 sentences x 21 words
2026-12-03T18:23:57.156681Z [info     ] Done. Returned value was: {'output_dir': '/tmp/dagart/demo/preprocess', 'fingerprint': 'e0734
2026-12-03T18:23:57.345006Z [info     ] Task instance state updated    [airflow.api_fastapi.execution_api.routes.task_instances] correlation_id=01a23d26-1b61 loc=task_instances.py:485 new_state=success rows_affected=1 ti_id=01a23d25-cac6
2026-12-03T18:23:57.523638Z [info     ] [DAG TEST] end task task_id=preprocess map_index=-1 [airflow.sdk.definitions.dag] loc=dag.py:1563
2026-12-03T18:23:57.566579Z [info     ] [DAG TEST] starting task_id=train map_index=-1 [airflow.sdk.definitions.dag] loc=dag.py:1501
train: 140 training / 20 validation documents, 4 classes, 188,604 parameters, 5 batches per epoch of up to 32
E0000 00:00:1796322249.618618   21175 util.cc:131] oneDNN supports DT_BOOL only on platforms with AVX-512. Falling back to the
Successfully registered model 'han-demo'.
2026-12-03T18:25:47.932295Z [error    ] Task failed with exception     [task] loc=task_runner.py:1676
Traceback (most recent call last):
  File "/work/main/.venv/lib/python3.11/site-packages/airflow/sdk/execution_time/task_runner.py", line 1579, in _run_task_and_map
    result = _execute_task(context=context, ti=ti, log=log)
             ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/work/main/pipeline/stages/train.py", line 107, in preprocess_outputs
    raise TrainError(
pipeline.stages.train.TrainError: no preprocessing outputs in /tmp/x/demo/preprocess; run `make preprocess` first
2026-12-03T18:25:48.619493Z [info     ] Task instance state updated    [airflow.api_fastapi.execution_api.routes.task_instances] correlation_id=01a23d27-cba0 loc=task_instances.py:485 new_state=up_for_retry rows_affected=1 ti_id=01a23d27-a2d0
2026-12-03T18:25:48.649356Z [warning  ] No tasks to run. unrunnable tasks: {<TaskInstance: han_retrain.preprocess manual__2026-12
"""


def test_the_console_shows_the_pipelines_lines_and_each_tasks_state_and_nothing_of_airflows_records():
    console = ConsoleFilter()
    shown = [line for line in map(console.line, SAMPLE.splitlines(keepends=True)) if line is not None]
    assert shown == [
        "dag-test: task preprocess started",
        "read documents: 200 in 0.1s (2,149/s)",
        "preprocess: 200 input = 200 kept + 0 quarantined",
        "preprocess: wrote /tmp/dagart/demo/preprocess in 3.8s (52 documents/s); vocabulary 232, limits 29 sentences x 21 words",
        "dag-test: task preprocess success",
        "dag-test: task train started",
        "train: 140 training / 20 validation documents, 4 classes, 188,604 parameters, 5 batches per epoch of up to 32",
        "dag-test: task train raised TrainError: no preprocessing outputs in /tmp/x/demo/preprocess; run `make preprocess` "
        "first",
        "dag-test: task train up_for_retry (Airflow runs it again after retrain.retry_delay_seconds; Ctrl-C stops the run)",
    ]


def test_airflows_whole_output_goes_to_the_log_and_the_picked_lines_to_the_console(tmp_path, capsys):
    log_path = tmp_path / "dag-test.log"
    with log_path.open("w", encoding="utf-8") as log:
        rc = airflow("version", env={**os.environ, "AIRFLOW_HOME": str(tmp_path / "home")}, log=log,
                     show=lambda text: f"version: {text.strip()}" if text[:1].isdigit() else None)
    assert rc == 0
    logged = log_path.read_text(encoding="utf-8")
    version = logged.splitlines()[-1]
    assert logged.startswith(f"=== {os.path.dirname(sys.executable)}/airflow version\n") and version[:1].isdigit()
    assert capsys.readouterr().out == f"version: {version}\n"
    assert tail(log_path, 1) == version + "\n"

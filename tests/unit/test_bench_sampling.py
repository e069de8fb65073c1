"""py-spy's raw samples summed by role, function and package, waits and start-up set apart (bench.sampling)."""

from __future__ import annotations

from bench.sampling import package_of, read, report, role_of

DRIVER = "process 10:\"python -m bench.profile\""
WORKER = "process 11:\"python -m celery -A relaybus worker\""
POOL = "process 12:\"python -m celery -A relaybus worker\""
RAW = [
    f"{DRIVER};main (bench/profile.py:90);_one (bench/throughput.py:120);sleep (time:0) 40\n",
    f"{DRIVER};{WORKER};asynloop (celery/worker/loops.py:97);poll (kombu/utils/eventio.py:83);"
    "_epoll.poll (kombu/utils/eventio.py:83) 30\n",
    f"{DRIVER};{WORKER};<module> (relaybus/celery.py:1);_find_and_load (<frozen importlib._bootstrap>:1176) 9\n",
    f"{DRIVER};{WORKER};send (celery/events/dispatcher.py:172);loads (amqp/serialization.py:153) 6\n",
    f"{DRIVER};{WORKER};AsynPool._create_worker_process (celery/concurrency/asynpool.py:567) 4\n",
    f"{DRIVER};{WORKER};{POOL};thread (0x1);workloop (billiard/pool.py:351);"
    "_append_new (eventstore/_append.py:182);insert_rows (eventstore/_insert.py:147) 8\n",
    f"{DRIVER};{WORKER};{POOL};thread (0x1);workloop (billiard/pool.py:351);"
    "trace_task (celery/app/trace.py:454) 2\n",
    f"{DRIVER};{WORKER};{POOL};thread (0x2);_flush_loop (tasks/runtime/recording/held.py:79) 50\n",
    "not a sample\n",
]


def test_samples_are_summed_by_role_and_running_frame_with_waits_and_imports_apart() -> None:
    roles = read(RAW)

    pool, worker, driver = roles["pool"], roles["worker"], roles["driver"]
    assert (pool.samples, pool.idle, pool.startup, pool.running) == (60, 50, 0, 10)
    assert pool.functions == {"insert_rows (eventstore/_insert.py:147)": 8, "trace_task (celery/app/trace.py:454)": 2}
    assert pool.packages == {"eventstore": 8, "celery": 2}
    assert (worker.samples, worker.idle, worker.startup, worker.running) == (49, 30, 13, 6)
    assert worker.packages == {"amqp": 6}
    assert (driver.samples, driver.running) == (40, 0)  # asleep, waiting for the tasks


def test_the_report_gives_shares_of_the_running_samples() -> None:
    text = report(read(RAW), top=5)

    assert "-- pool: 60 samples, 10 running (50 waiting, 0 starting up)" in text
    assert "80.0 %  insert_rows (eventstore/_insert.py:147)" in text
    assert "by package: eventstore 80.0 %, celery 20.0 %" in text
    assert "-- driver" not in text  # nothing ran there


def test_roles_and_packages() -> None:
    assert [role_of(["p"] * k) for k in range(4)] == ["driver", "driver", "worker", "pool"]
    assert package_of("fold (sagas/state.py:200)") == "sagas"
    assert package_of("replace (dataclasses.py:1453)") == "dataclasses.py"

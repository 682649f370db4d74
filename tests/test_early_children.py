"""tests/early_children.py: children started before their tests' turn must answer, fail loudly, never
leave a test waiting, and never outlive the session."""
import sys
import time

import early_children as ec
import pytest

PRINT = [sys.executable, "-c", "import sys; print('answer', sys.argv[1:])", "x"]


MINE = [("m", name) for name in ("t", "bad", "good", "slow", "next")]  # (never the suite's own early children)


@pytest.fixture(autouse=True)
def no_leftovers():
    yield
    ec.stop(MINE)


def test_an_early_child_answers_its_test_once():
    ec.start({("m", "t"): (PRINT, ec.child_env())})
    assert ec.answer("m", "t", lambda: pytest.fail("ran again")).split()[0] == "answer"
    # collected: a rerun of the test runs its child afresh
    assert ec.answer("m", "t", lambda: (PRINT, ec.child_env())).split()[0] == "answer"


def test_a_child_that_cannot_start_fails_its_test_and_not_the_next_ones():
    ec.start({("m", "bad"): (["/nonexistent/binary"], ec.child_env()), ("m", "good"): (PRINT, ec.child_env())})
    with pytest.raises(AssertionError, match="could not run"):
        ec.answer("m", "bad", None)
    assert ec.answer("m", "good", None).startswith("answer")


def test_a_failing_child_fails_its_test_with_its_stderr():
    fail = [sys.executable, "-c", "import sys; sys.exit('broken on purpose')"]
    with pytest.raises(AssertionError, match="broken on purpose"):
        ec.run_now(fail, ec.child_env())


def test_stop_kills_what_runs_and_starts_nothing_more_and_a_later_session_starts_afresh():
    sleep = [sys.executable, "-c", "import time; time.sleep(60)"]
    ec.start({("m", "slow"): (sleep, ec.child_env()), ("m", "next"): (PRINT, ec.child_env())})
    child, after = ec._queued[("m", "slow")], ec._queued[("m", "next")]
    deadline = time.time() + 30
    while child.proc is None and time.time() < deadline:
        time.sleep(0.05)
    ec.stop(MINE)
    assert child.done.wait(10) and child.proc.poll() is not None  # killed, not left to sleep 60 s
    assert after.done.wait(10) and after.code == "not run: the session ended"
    ec.start({("m", "next"): (PRINT, ec.child_env())})  # (two pytest sessions in one process)
    assert ec.answer("m", "next", None).startswith("answer")


def test_a_child_imports_this_checkout():
    probe = [sys.executable, "-c", "import engine; print(engine.__file__)"]
    out = ec.run_now(probe, ec.child_env({"PATH": "/usr/bin:/bin"}))
    assert out.strip().startswith(str(ec.REPO))

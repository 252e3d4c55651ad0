"""SupervisedThread's health: a thread that ends normally is finished, never died."""

from inspect_edge.worker import SupervisedThread


def test_a_target_that_returns_is_finished_and_healthy():
    t = SupervisedThread(lambda: None, "file-source")
    t.start()
    t.stop(2.0)
    assert t.status()["state"] in ("finished", "stopped") and t.healthy


def test_a_thread_finishing_while_its_health_is_read_is_not_called_died():
    t = SupervisedThread(lambda: None, "file-source")
    t.state = "running"

    class FinishesWhenAsked:
        """The thread's last steps land between the two reads of `healthy`: it records
        "finished" and exits just as its liveness is checked."""
        ident = 1

        def is_alive(self):
            t.state = "finished"
            return False

    t._thread = FinishesWhenAsked()
    assert t.healthy and t.state == "finished"


def test_a_thread_ended_without_its_bookkeeping_is_died():
    t = SupervisedThread(lambda: None, "file-source")
    t.state = "running"

    class Gone:
        ident = 1

        def is_alive(self):
            return False

    t._thread = Gone()
    assert not t.healthy and t.state == "died"

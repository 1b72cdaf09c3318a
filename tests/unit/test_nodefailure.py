"""nodefailure.error_text: what the train job's ERROR line quotes of an exception the driver saw."""
from tfospipe.nodefailure import error_text


class PythonException(Exception):
    """Like pyspark's: its repr says nothing, its text holds the executor's traceback."""


def test_an_executor_traceback_is_reduced_to_the_exception_it_raised():
    text = ("\n  An exception was thrown from the Python worker. Please see the stack trace below.\n"
            "Traceback (most recent call last):\n  File \"/x/worker.py\", line 1, in main\n    process()\n"
            "  File \"/x/TFSparkNode.py\", line 9, in _shutdown\n    raise Exception(msg)\n"
            "Exception: Queue 'input' not found on this node\n\n")
    assert error_text(PythonException(text)) == "PythonException: Exception: Queue 'input' not found on this node"


def test_other_exceptions_give_their_text_or_repr():
    assert error_text(ValueError("bad value")) == "bad value"
    assert error_text(PythonException()) == "PythonException()"

"""spark-submit entrypoint of the validate task (see tfospipe/validate.py)."""
import sys

from tfospipe import validate, runner

if __name__ == "__main__":
    sys.exit(runner.main("validate", validate.run))

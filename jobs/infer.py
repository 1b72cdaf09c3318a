"""spark-submit entrypoint of the infer task (see tfospipe/infer.py)."""
import sys

from tfospipe import infer, runner

if __name__ == "__main__":
    sys.exit(runner.main("infer", infer.run))

"""spark-submit entrypoint of the train task (see tfospipe/train.py)."""
import sys

from tfospipe import train, runner

if __name__ == "__main__":
    sys.exit(runner.main("train", train.run, prepare=train.prepare))

"""spark-submit entrypoint of the convert task (see tfospipe/convert.py)."""
import sys

from tfospipe import convert, runner

if __name__ == "__main__":
    sys.exit(runner.main("convert", convert.run, prepare=convert.prepare))

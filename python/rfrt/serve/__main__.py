"""`python -m rfrt.serve ...`, the same as `rfrt serve ...`."""
import argparse
import sys

from .cli import add_arguments, main

parser = argparse.ArgumentParser(prog="python -m rfrt.serve", description="stream live generation to a browser")
add_arguments(parser)
sys.exit(main(parser.parse_args()))

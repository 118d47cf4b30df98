"""``python -m linreg.cli``: what torchrun and the tests start."""

from linreg.cli.main import main

main()

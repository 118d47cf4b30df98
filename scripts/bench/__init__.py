"""linreg's benchmark, one module per measurement (see ``__main__`` for the whole run and issue 24's goals table)."""

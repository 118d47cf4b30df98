"""Rows in: tables read whole or streamed, batches, and the LightningDataModule that serves them.

Every module but ``datamodule`` is pure and never imports Lightning (a test checks): ``tables`` (a
table read whole), ``rows`` (rows on disk), ``files`` (a table's files), ``source`` and ``streams`` (a
table streamed), ``decoded``, ``checks``, ``progress`` and ``batches``.
Nothing is imported here, so reading a table does not pay for Lightning.
"""

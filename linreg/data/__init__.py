"""Rows in: tables read whole or streamed, batches, and the LightningDataModule that serves them.

``tables``, ``streams`` and ``batches`` never import Lightning (a test checks); ``datamodule`` does.
Nothing is imported here, so reading a table does not pay for Lightning.
"""

"""The Lightning side of a fit: the LightningModule, its metrics, and its callbacks, each in its own file."""

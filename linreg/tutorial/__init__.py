"""The seed tutorial: its data and its four hand-written training loops, the yardstick for the Lightning fit."""

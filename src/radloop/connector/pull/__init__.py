"""Pulling studies from a PACS: C-FIND/C-MOVE/C-GET and QIDO/WADO sources, polling."""

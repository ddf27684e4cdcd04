"""Feedback: what radiologists made of AI results (accept, edit, reject), edited masks stored as
new SEGs, agreement between AI and final masks, and per-model quality over time."""

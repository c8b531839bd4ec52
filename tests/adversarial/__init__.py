"""Adversarial tests: hostile replies, hostile code, hostile inputs (issue 13)."""

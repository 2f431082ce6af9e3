"""Helpers shared by test modules (test modules import nothing from each other)."""

"""Synthetic multi-site datasets (no real patient data): the demo sites and the clinical generator."""

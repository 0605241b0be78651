"""Simulators of source/target settings."""

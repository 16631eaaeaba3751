"""Scenarios (scenario.md, version 1): ``schema`` reads and checks a file, ``runner`` runs it."""

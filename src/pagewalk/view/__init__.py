"""A local web view of one scenario run: ``model.py`` turns the run into a JSON document,
``server.py`` serves it with the page in ``static/`` from 127.0.0.1 (or writes the same
files to a directory), ``command.py`` is ``pagewalk view``."""

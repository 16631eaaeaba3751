"""``pagewalk run`` and ``pagewalk examples``: run a scenario and print its report."""

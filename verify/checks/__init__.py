r"""The checks, one module each; every check maps ``(Context, Case)`` to a list of report rows."""

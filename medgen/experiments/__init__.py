"""One module per notebook: the settings grid, table rows and findings of that notebook.

Notebooks only call these functions and display their results, so a table's logic is
testable, importable and shared with the CLI and the benchmarks.
"""

"""Reading results: the result files, statistics over seeds, tables, plots, the check, parameter counts."""

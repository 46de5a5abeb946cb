"""The command line: Typer commands that parse flags, call the library and render what it returns (tables, the progress
bar, plots)."""

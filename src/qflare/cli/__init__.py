"""Command-line interface: parse, build settings, call one function."""

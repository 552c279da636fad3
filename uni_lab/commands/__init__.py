"""CLI subcommands, one module each; :mod:`uni_lab.cli` discovers them."""

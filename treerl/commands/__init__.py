"""The commands of the `treerl` CLI, one module each, thin entry points above the library: each reads its
arguments and config, calls the library and prints; `treerl.cli` parses and dispatches."""

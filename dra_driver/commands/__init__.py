"""One module per `dra-driver` subcommand; each exposes register(subparsers).

common.py is what they share: flags -> Settings, with --fake-nvml resolved.
"""

"""One module per `dra-driver` subcommand; each exposes register(subparsers)."""

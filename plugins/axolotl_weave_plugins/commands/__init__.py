"""Built-in command plugins (extra `weave` subcommands)."""

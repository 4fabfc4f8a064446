"""The ``buttress`` command's subcommands, one module each; ``buttress.cli`` assembles them."""

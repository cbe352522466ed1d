"""Sub-commands of the `pixelrec` tool, one module each (see `pixelrec.cli`)."""

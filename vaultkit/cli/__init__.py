"""The ``vaultkit`` command line. Parsing and printing only; the work is done by the library."""

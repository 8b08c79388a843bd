"""Administration of a gateway home: its setup and its preflight check (``securemail gateway check``)."""

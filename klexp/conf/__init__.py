"""klexp's Hydra configs, shipped inside the package as ``klexp.conf`` (``pkg://klexp.conf``)."""

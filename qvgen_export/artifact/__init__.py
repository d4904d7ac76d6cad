"""What an exported folder is to everything that reads or writes it: its graph I/O contract
(``contract``) and its manifest of hashed files (``manifest``)."""

"""Sans-IO protocol state machines: no sockets, disk, clock or OS randomness in here."""

"""Keys of people and gateways: the store (by address, by fingerprint) and, later, the directory."""

"""Mail as people see it: composing PGP/MIME, reading any of the formats, Maildir storage."""

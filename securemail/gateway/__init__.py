"""The gateway: policy, crypto stage and queueing behind the SMTP listeners (securemail serve)."""

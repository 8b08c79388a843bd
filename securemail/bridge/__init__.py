"""The bridge: end-to-end encryption on the person's own machine for mail clients without OpenPGP."""

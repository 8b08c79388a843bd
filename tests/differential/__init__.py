"""The differential check of crossed bodies (checker.py); the pytest plugin is added next."""

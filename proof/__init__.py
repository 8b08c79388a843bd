"""``make proof``: run the full proof (crash, fault, hostile-input and fuzz harnesses) and publish the figures."""

"""Over-the-air updates: the desired state from the collector, downloaded, verified, deployed."""

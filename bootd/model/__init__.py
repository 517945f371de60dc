"""Domain types shared by every service: node states, MACs, names."""

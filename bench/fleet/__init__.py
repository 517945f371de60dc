"""bench/fleet: thousands of simulated machines against a real bootd (see __main__)."""

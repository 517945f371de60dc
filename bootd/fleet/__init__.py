"""Fleet coordination: admission (wave limits), rollouts, and several daemons on one database."""

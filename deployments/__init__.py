"""Ray Serve worker deployments, one module each, thin wrappers over `pipeline` and `triposr`."""

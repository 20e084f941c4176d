"""The Serve application: app builder, Starlette ingress, job store, settings, CLI, batch entry point."""
